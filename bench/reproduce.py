"""The paper's table in miniature, offline: DQ-BART's and TBT's findings on the demo task, at
full data and with the students given a fraction of it.

    python -m bench.reproduce [--workdir runs/reproduce] [--config configs/demo.py]
                              [--fraction 0.1] [--seeds 3] [--set KEY=VALUE ...]

One teacher, trained on the whole training split, then the table twice: once with the students
on the whole split ("full") and once on `--fraction` of it (`student.train_fraction`, a subset
drawn by each student's seed; dev and test splits unchanged). Each table's rows:
- quantization only (task loss, no teacher) at 8-8-8 and 2-2-8;
- DQ-BART at 8-8-8 and 2-2-8 at full depth, and 2-2-8 with a shallower and a 1-layer decoder;
- distillation only: full-precision students at the same three depths (the paper's section 4.4);
- TBT at W2A8, W1A8, W2A2 and W1A1 (ternary/binary weights, elastic activations at 1-2 bits).
Every row with 2-bit weights runs with `--seeds` student seeds (`student.seed` 0, 1, ...: data
order and, with a fraction, the subset), reported as mean and spread. All of it is one
`train.sweep` with explicit points, so it resumes like any sweep: rerun the same command after
an interruption.

Writes the sweep's `sweep.md`, `sweep.csv` and `tradeoff.png` (every job), `reproduce.md` (the
table with seed means, the findings per data setting), `tradeoff_<setting>.png` (seed means)
in the workdir and `bench/results/reproduce.json`.

Why the limited setting: in the paper the teacher is pretrained BART, which knows far more than
the task data the students see; that knowledge is what distillation passes on and what
quantization alone loses. Offline, the stand-in is a teacher that has seen the whole training
split while the students see a tenth of it.

Sizes (`SETS`): the teacher trains `teacher.steps=1600`, where its dev score levels off (a
teacher still improving lets students trained on from it gain from the extra task training
alone, whatever their loss). The students train `train.steps=200` and the dev split is scored
once at the end, so the 51 jobs fit in 90 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

from bench.common import write_json
from train.sweeps.grid import BITS_KEYS, Point, parse_set
from train.sweeps.plan import build_config
from train.sweeps.plot import pareto_front, plot_tradeoff
from train.sweeps.report import collect_rows
from train.sweeps.runner import run_sweep
from train.sweeps.state import load_sweep

# A converged teacher (see the module docstring); students sized so the whole run fits 90 minutes.
SETS = {"teacher.steps": "1600", "train.steps": "200", "train.eval_every": "200"}
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
    rows = [Row("qonly_8-8-8", "quantization only", (8, 8, 8), full, {"distill.enabled": "False"}),
            Row("qonly_2-2-8", "quantization only", (2, 2, 8), full, {"distill.enabled": "False"}),
            Row("dq_8-8-8", "DQ-BART", (8, 8, 8), full, {}),
            Row("dq_2-2-8", "DQ-BART", (2, 2, 8), full, {}),
            Row(f"dq_2-2-8_{shallow}", "DQ-BART", (2, 2, 8), shallow, {}),
            Row(f"dq_2-2-8_{enc}-1", "DQ-BART", (2, 2, 8), f"{enc}-1", {})]
    rows += [Row(f"distill_{layers}", "distillation only", (0, 0, 0), layers, {})
             for layers in dict.fromkeys((full, shallow, f"{enc}-1"))]
    rows += [Row(f"tbt_W{w}A{a}", "TBT", (w, w, a), full, {"quant.method": "tbt"})
             for w, a in ((2, 8), (1, 8), (2, 2), (1, 1))]
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
                overrides = {**_bits(*row.wea), "student.layers": row.layers, **row.overrides,
                             "student.train_fraction": str(frac), "student.seed": str(seed)}
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


def findings(teacher: float | None, stats: dict, setting: str, enc: int, dec: int) -> list[dict]:
    """Each of the papers' claims in one data setting, with the numbers that decide it."""
    shallow = f"dq_2-2-8_{enc}-{max(dec - 1, 1)}"
    one = f"dq_2-2-8_{enc}-1"
    s = {r.name: stats.get((setting, r.name)) for r in table_rows(enc, dec)}
    out = []

    def claim(text, needed, holds, detail):
        if teacher is None or any(s.get(n) is None for n in needed):
            out.append({"claim": text, "holds": None, "detail": "not all points finished"})
        else:
            out.append({"claim": text, "holds": bool(holds()), "detail": detail()})

    claim("8-bit DQ is close to the teacher (at most 1 point below it)", ["dq_8-8-8"],
          lambda: teacher - s["dq_8-8-8"].mean <= 1.0,
          lambda: f"teacher {teacher:.2f}, DQ 8-8-8 {s['dq_8-8-8'].text()} "
                  f"(quantization only 8-8-8 {s['qonly_8-8-8'].text() if s.get('qonly_8-8-8') else '-'})")
    claim("2-bit quantization without distillation is clearly below 2-bit DQ (mean gap > 1 point and every "
          "DQ seed above every quantization-only seed)", ["qonly_2-2-8", "dq_2-2-8"],
          lambda: (s["dq_2-2-8"].mean - s["qonly_2-2-8"].mean > 1.0
                   and min(s["dq_2-2-8"].scores) > max(s["qonly_2-2-8"].scores)),
          lambda: f"quantization only {s['qonly_2-2-8'].text()}, DQ {s['dq_2-2-8'].text()}: gap "
                  f"{s['dq_2-2-8'].mean - s['qonly_2-2-8'].mean:+.2f}")
    dq_rows = ["dq_8-8-8", "dq_2-2-8", shallow, one]
    fp_rows = [r.name for r in table_rows(enc, dec) if r.kind == "distillation only"]

    def pareto_detail():
        parts = []
        for d in fp_rows:
            better = [q for q in dq_rows if s[q].ratio >= s[d].ratio and s[q].mean >= s[d].mean]
            best = max((q for q in dq_rows if s[q].ratio >= s[d].ratio), key=lambda q: s[q].mean)
            parts.append(f"distillation only {d.split('_')[-1]} ({s[d].ratio:.1f}x) {s[d].text()}: "
                         + (f"matched by DQ {better[0].removeprefix('dq_')} ({s[better[0]].ratio:.1f}x, "
                            f"{s[better[0]].mean:.2f})" if better else
                            f"no DQ point as good at its compression or more (best DQ "
                            f"{best.removeprefix('dq_')}, {s[best].mean:.2f})"))
        names = dq_rows + fp_rows
        front = [names[i] for i in pareto_front([(s[n].ratio, s[n].mean) for n in names])]
        return "; ".join(parts) + f". Pareto front (seed means): {', '.join(front)}"

    claim("DQ's quality-vs-compression points are at or above distillation-only's: every full-precision "
          "student is matched by a DQ student at least as good and at least as compressed",
          dq_rows + fp_rows,
          lambda: all(any(s[q].ratio >= s[d].ratio and s[q].mean >= s[d].mean for q in dq_rows) for d in fp_rows),
          pareto_detail)
    claim("quality falls as decoder layers are removed (DQ 2-2-8, seed means)", ["dq_2-2-8", shallow, one],
          lambda: (s["dq_2-2-8"].mean >= s[shallow].mean >= s[one].mean and s["dq_2-2-8"].mean > s[one].mean),
          lambda: f"{enc}-{dec}: {s['dq_2-2-8'].text()}, {shallow.split('_')[-1]}: {s[shallow].text()}, "
                  f"{enc}-1: {s[one].text()}")
    claim("TBT W2A8 is at least as good as DQ-BART 2-2-8 (seed means)", ["tbt_W2A8", "dq_2-2-8"],
          lambda: s["tbt_W2A8"].mean >= s["dq_2-2-8"].mean,
          lambda: f"TBT W2A8 {s['tbt_W2A8'].text()}, DQ-BART 2-2-8 {s['dq_2-2-8'].text()}: "
                  f"{s['tbt_W2A8'].mean - s['dq_2-2-8'].mean:+.2f}")
    claim("TBT W1A8 trains to a usable model (at least 80% of the teacher)", ["tbt_W1A8"],
          lambda: s["tbt_W1A8"].mean >= 0.8 * teacher,
          lambda: f"TBT W1A8 {s['tbt_W1A8'].text()} = {100 * s['tbt_W1A8'].mean / teacher:.0f}% of the teacher "
                  f"(W2A2 {s['tbt_W2A2'].text() if s.get('tbt_W2A2') else '-'}, "
                  f"W1A1 {s['tbt_W1A1'].text() if s.get('tbt_W1A1') else '-'})")
    return out


def _verdict(f: dict) -> str:
    return {True: "HOLDS", False: "DOES NOT HOLD", None: "UNDECIDED"}[f["holds"]]


def report(metric: str, teacher: float | None, stats: dict, settings: dict[str, float], found: dict,
           enc: int, dec: int, sets: dict, seeds: int) -> str:
    """reproduce.md: the table (seed means and spread) with a column per data setting, then the
    findings per setting."""
    head = ["student", "W-E-A", "E-D", "ratio (paper)"] + [
        f"{'full data' if name == FULL else f'{frac:.0%} of the data'}" for name, frac in settings.items()]
    lines = [f"# The paper's findings in miniature (test {metric})", "",
             "Settings: " + ", ".join(f"`{k}={v}`" for k, v in sets.items())
             + f"; {seeds} student seeds for the 2-bit-weight rows (mean ± sample std (min-max)).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t = "-" if teacher is None else f"{teacher:.2f}"
    lines.append(f"| teacher | 32-32-32 | {enc}-{dec} | 1.0x | " + " | ".join(t for _ in settings) + " |")
    for row in table_rows(enc, dec):
        cells = [stats.get((name, row.name)) for name in settings]
        ratio = next((c.ratio for c in cells if c), None)
        wea = "-".join(str(b or 32) for b in row.wea)
        lines.append(f"| {row.kind} | {wea} | {row.layers} | " + ("-" if ratio is None else f"{ratio:.1f}x")
                     + " | " + " | ".join("-" if c is None else c.text() for c in cells) + " |")
    lines += ["", "| finding | " + " | ".join(head[4:]) + " |", "|---|" + "---|" * len(settings)]
    claims = [f["claim"] for f in next(iter(found.values()))]
    for i, claim in enumerate(claims):
        lines.append(f"| {claim} | " + " | ".join(_verdict(found[name][i]) for name in settings) + " |")
    for name in settings:
        lines += ["", f"## {head[4 + list(settings).index(name)]}", ""]
        lines += [f"- {_verdict(f)}: {f['claim']}: {f['detail']}" for f in found[name]]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], metric: str, stats: dict, all_jobs: list[Job], setting: str, path: str, title: str):
    """The trade-off plot of one data setting with one point per row (its seed mean)."""
    key = f"test_{metric}"
    first = {}
    for j in all_jobs:
        if j.setting == setting:
            first.setdefault(j.row.name, j.point.name)
    by_point = {r["point"]: r for r in rows}
    out = [r for r in rows if r["distill"] == "teacher"]
    kinds = {j.row.name: j.row.kind for j in all_jobs}
    label = {"quantization only": "quant-only", "distillation only": "distill-only"}  # else DQ
    for name, point in first.items():
        if (setting, name) in stats and point in by_point:
            out.append({**by_point[point], "point": name, key: stats[(setting, name)].mean,
                        "distill": label.get(kinds[name], "DQ")})
    plot_tradeoff(out, metric, path, title=title)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/reproduce")
    ap.add_argument("--config", default="configs/demo.py")
    ap.add_argument("--fraction", type=float, default=0.1,
                    help="the students' fraction of the training split in the limited setting (0, 1)")
    ap.add_argument("--seeds", type=int, default=3, help="student seeds for each 2-bit-weight row (>= 1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a fixed override for every job, e.g. train.steps=100 for a quicker look")
    args = ap.parse_args(argv)
    if not 0 < args.fraction < 1:
        ap.error(f"--fraction {args.fraction}: must be in (0, 1); 1 is the full setting, which always runs.")
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: must be at least 1.")
    sets = {**SETS, **dict(parse_set(s) for s in args.set)}
    c = build_config(args.config, sets)
    enc, dec = (int(v) for v in c.student.layers.split("-"))
    all_jobs = jobs(enc, dec, args.fraction, args.seeds)
    settings = setting_names(args.fraction)
    t0 = time.monotonic()
    rc = run_sweep(args.config, args.workdir, [j.point for j in all_jobs], sets)
    wall = time.monotonic() - t0
    rows, _, metric = collect_rows(args.workdir)
    teacher, stats = gather(rows, metric, all_jobs)
    found = {name: findings(teacher, stats, name, enc, dec) for name in settings}
    runs = load_sweep(args.workdir).get("runs", {})
    recorded = sum(v.get("seconds") or 0 for v in runs.values())
    text = report(metric, teacher, stats, settings, found, enc, dec, sets, args.seeds)
    text += f"\nJobs' wall time: {recorded / 60:.1f} min over {len(runs)} jobs (this invocation {wall / 60:.1f} min).\n"
    with open(os.path.join(args.workdir, "reproduce.md"), "w") as f:
        f.write(text)
    for name in settings:
        _plot(rows, metric, stats, all_jobs, name, os.path.join(args.workdir, f"tradeoff_{name}.png"),
              f"{args.config}, students on {'all' if name == FULL else f'{settings[name]:.0%}'} of the training "
              f"data: test {metric} (seed means) vs compression")
    print(text)
    table = [{"setting": name, "row": row, "scores": list(st.scores), "mean": st.mean, "std": st.std,
              "compression_ratio": st.ratio} for (name, row), st in stats.items()]
    print("wrote", write_json("reproduce", {
        "config": args.config, "sets": sets, "fraction": args.fraction, "seeds": args.seeds, "metric": metric,
        "teacher": teacher, "table": table, "findings": found, "jobs": rows,
        "jobs_wall_s": recorded, "invocation_wall_s": wall}))
    print(f"report: {os.path.join(args.workdir, 'reproduce.md')}, per-job table: "
          f"{os.path.join(args.workdir, 'sweep.md')}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
