"""bench.reproduce's table: its rows (student kinds), the jobs that run them in each data setting
and seed, and each row's test scores over its seeds."""

from __future__ import annotations

import dataclasses
import statistics

from train.sweeps.grid import BITS_KEYS, Point

FULL = "full"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the paper's table: a student kind, run once per data setting (and per seed)."""

    name: str  # stable id, part of the point directories' names
    kind: str  # what the table calls it
    wea: tuple[int, int, int]  # weight, embedding, activation bits (0: full precision)
    layers: str  # encoder-decoder
    overrides: dict

    @property
    def seeded(self) -> bool:
        """Rows with 2-bit weights, whose verdicts compare small gaps, run with several seeds."""
        return self.wea[0] == 2


def _bits(w: int, e: int, a: int) -> dict:
    return dict(zip(BITS_KEYS, (str(w), str(e), str(a))))


def table_rows(enc: int, dec: int) -> list[Row]:
    """The table's rows for a teacher with `enc`-`dec` layers."""
    full, shallow = f"{enc}-{dec}", f"{enc}-{max(dec - 1, 1)}"
    rows = [
        Row("qonly_8-8-8", "quantization only", (8, 8, 8), full, {"distill.enabled": "False"}),
        Row("qonly_2-2-8", "quantization only", (2, 2, 8), full, {"distill.enabled": "False"}),
        Row("dq_8-8-8", "DQ-BART", (8, 8, 8), full, {}),
        Row("dq_2-2-8", "DQ-BART", (2, 2, 8), full, {}),
        Row(f"dq_2-2-8_{shallow}", "DQ-BART", (2, 2, 8), shallow, {}),
        Row(f"dq_2-2-8_{enc}-1", "DQ-BART", (2, 2, 8), f"{enc}-1", {}),
    ]
    rows += [
        Row(f"distill_{layers}", "distillation only", (0, 0, 0), layers, {})
        for layers in dict.fromkeys((full, shallow, f"{enc}-1"))
    ]
    rows += [
        Row(f"tbt_W{w}A{a}", "TBT", (w, w, a), full, {"quant.method": "tbt"})
        for w, a in ((2, 8), (1, 8), (2, 2), (1, 1))
    ]
    return rows


def setting_names(fraction: float) -> dict[str, float]:
    """Data setting name -> the students' fraction of the training split."""
    return {FULL: 1.0, f"f{fraction * 100:g}".replace(".", "p"): fraction}


@dataclasses.dataclass(frozen=True)
class Job:
    """A student job: its sweep point (the seed is in its overrides), data setting and row."""

    point: Point
    setting: str
    row: Row


def jobs(enc: int, dec: int, fraction: float, seeds: int) -> list[Job]:
    """Every student job: each row in each data setting, the seeded rows once per seed."""
    out = []
    for setting, frac in setting_names(fraction).items():
        for row in table_rows(enc, dec):
            for seed in range(seeds if row.seeded else 1):
                overrides = {
                    **_bits(*row.wea),
                    "student.layers": row.layers,
                    **row.overrides,
                    "student.train_fraction": str(frac),
                    "student.seed": str(seed),
                }
                name = f"{setting}_{row.name}" + (f"_s{seed}" if row.seeded else "")
                out.append(Job(Point(name, overrides), setting, row))
    return out


@dataclasses.dataclass(frozen=True)
class Stat:
    """A row's test scores over its seeds."""

    scores: tuple[float, ...]
    ratio: float  # compression (paper convention)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    def text(self) -> str:
        if len(self.scores) == 1:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f} ({min(self.scores):.2f}-{max(self.scores):.2f})"


def gather(rows: list[dict], metric: str, all_jobs: list[Job]) -> tuple[float | None, dict]:
    """(teacher's test score, {(setting, row name): Stat}) from the sweep's rows; rows with an
    unfinished seed are left out."""
    key = f"test_{metric}"
    by_point = {r["point"]: r for r in rows}
    teacher = next((r.get(key) for r in rows if r["distill"] == "teacher"), None)
    grouped: dict[tuple[str, str], list[dict]] = {}
    for j in all_jobs:
        grouped.setdefault((j.setting, j.row.name), []).append(by_point.get(j.point.name) or {})
    stats = {}
    for k, members in grouped.items():
        if all(m.get(key) is not None for m in members):
            stats[k] = Stat(tuple(m[key] for m in members), members[0]["compression_ratio"])
    return teacher, stats
