"""A sweep's tables, `DIR/sweep.csv` and `DIR/sweep.md`, and its plot `DIR/tradeoff.png`, from
`DIR/sweep.json` and each job's `results.json` (and `metrics.jsonl` for dev scores)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable

from dq_jax.export import workdir as run_dir
from dq_jax.utils.table import format_table
from train.sweeps.grid import TEACHER_DIR
from train.sweeps.plot import plot_tradeoff
from train.sweeps.state import is_finished, load_sweep, read_json


def _best_dev(workdir: str, stage: str, metric: str) -> float | None:
    """The best dev score of a stage from metrics.jsonl (results.json has it only when the stage
    finished in the job's last invocation)."""
    best = None
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if r.get("stage") == stage and r.get("split") == "dev" and isinstance(r.get(metric), (int, float)):
                    best = r[metric] if best is None else max(best, r[metric])
    except FileNotFoundError:
        pass
    return best


def _test_scores(d: dict | None) -> dict[str, float]:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float)) and k != "step"}


def _status(workdir: str, name: str, runs: dict) -> str:
    if is_finished(workdir, name):
        return "done"
    rec = runs.get(name, {})
    if rec.get("status") == "failed":
        return f"failed (exit {rec['returncode']})" if "returncode" in rec else "failed"
    return "interrupted" if rec.get("status") in ("interrupted", "running") else "not run"


def _teacher_layers(dirs: Iterable[str]) -> str | None:
    for d in dirs:
        cfg = read_json(os.path.join(d, run_dir.TEACHER_DIR, "config.json"))
        if cfg:
            return f"{cfg.get('encoder_layers')}-{cfg.get('decoder_layers')}"
    return None


def collect_rows(workdir: str) -> tuple[list[dict], list[str], str]:
    """One row per teacher and per point (sweep.json order): (rows, test metric keys, eval metric)."""
    # imported here: dq_jax.inference.metrics loads the ROUGE and BLEU scorers (about a second), which
    # planning and --print-commands, importing this module through the runner, do not need
    from dq_jax.inference.metrics import TASK_METRICS

    sweep = load_sweep(workdir)
    runs = sweep.get("runs", {})
    results = {p["name"]: read_json(os.path.join(workdir, p["name"], "results.json")) for p in sweep["points"]}
    metric = next((p["summary"]["metric"] for p in sweep["points"]), "rougeLsum")
    keys = set()
    for r in results.values():
        keys |= set(_test_scores((r or {}).get("student_test"))) | set(_test_scores((r or {}).get("teacher_test")))
    test_keys = [k for k in TASK_METRICS if k in keys] + sorted(keys - set(TASK_METRICS))

    def row(point, status, wea, method, distill, layers, size, ratio, packed, p_ratio, dev, test, seconds):
        r = {
            "point": point,
            "status": status,
            "wea_bits": wea,
            "method": method,
            "distill": distill,
            "layers": layers,
            "size_mib": size,
            "compression_ratio": ratio,
            "packed_mib": packed,
            "packed_compression_ratio": p_ratio,
            f"dev_{metric}": dev,
        }
        r.update({f"test_{k}": (test or {}).get(k) for k in test_keys})
        r["train_time_s"] = seconds
        return r

    # teachers: one per teacher job, and one for points that distill from a given teacher
    groups: dict[str, list[str]] = {}
    for p in sweep["points"]:
        groups.setdefault(p.get("teacher") or TEACHER_DIR, []).append(p["name"])
    rows = []
    for t_name, members in groups.items():
        trained = any(t["name"] == t_name for t in sweep.get("teachers", []))
        t_dir = os.path.join(workdir, t_name)
        first = next((results[m] for m in members if results[m] and results[m].get("teacher_test")), None)
        t_res = read_json(os.path.join(t_dir, "results.json")) if trained else None
        size = (first or t_res or {}).get("size", {})
        dev = ((t_res or {}).get("teacher_dev") or {}).get(metric)
        if dev is None and trained:
            dev = _best_dev(t_dir, "teacher", metric)
        status = _status(workdir, t_name, runs) if trained else ("done" if first else "not run")
        dirs = ([t_dir] if trained else []) + [os.path.join(workdir, m) for m in members]
        rows.append(
            row(
                t_name,
                status,
                "32-32-32",
                "-",
                "teacher",
                _teacher_layers(dirs),
                size.get("teacher_mib"),
                1.0 if size else None,
                size.get("teacher_mib"),
                1.0 if size else None,
                dev,
                _test_scores((first or {}).get("teacher_test")),
                runs.get(t_name, {}).get("seconds") if trained else None,
            )
        )
    for p in sweep["points"]:
        r, s = results[p["name"]] or {}, p["summary"]
        size = r.get("size", {})
        dev = (r.get("student_dev") or {}).get(metric)
        if dev is None and r:
            dev = _best_dev(os.path.join(workdir, p["name"]), "distill", metric)
        rows.append(
            row(
                p["name"],
                _status(workdir, p["name"], runs),
                s["wea"],
                s["method"],
                s["distill"],
                s["layers"],
                size.get("student_mib"),
                size.get("compression_ratio"),
                size.get("packed_student_mib"),
                size.get("packed_compression_ratio"),
                dev,
                _test_scores(r.get("student_test")),
                runs.get(p["name"], {}).get("seconds"),
            )
        )
    return rows, test_keys, metric


def _csv_value(k: str, v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.1f}" if k == "train_time_s" else f"{v:.4f}"
    return str(v)


def _md_value(k: str, v) -> str:
    if v is None:
        return "-"
    if not isinstance(v, (int, float)):
        return str(v)
    if k == "train_time_s":
        return f"{v:.0f}"
    if k.endswith("ratio"):
        return f"{v:.1f}x"
    return f"{v:.2f}"


def _md_header(k: str, metric: str) -> str:
    fixed = {
        "point": "point",
        "status": "status",
        "wea_bits": "W-E-A",
        "method": "method",
        "distill": "distill",
        "layers": "E-D",
        "size_mib": "MiB (paper)",
        "compression_ratio": "ratio (paper)",
        "packed_mib": "MiB (packed)",
        "packed_compression_ratio": "ratio (packed)",
        "train_time_s": "time (s)",
    }
    if k in fixed:
        return fixed[k]
    return f"dev {metric}" if k.startswith("dev_") else f"test {k[len('test_') :]}"


def write_report(workdir: str) -> list[dict]:
    """Writes DIR/sweep.csv, DIR/sweep.md and DIR/tradeoff.png from sweep.json and the points'
    results.json; returns the rows (teachers first)."""
    rows, _, metric = collect_rows(workdir)
    sweep = load_sweep(workdir)
    cols = list(rows[0])
    with open(os.path.join(workdir, "sweep.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([[_csv_value(k, r[k]) for k in cols] for r in rows])
    table = format_table(rows, cols, {k: _md_header(k, metric) for k in cols}, _md_value, markdown=True)
    lines = [
        f"# Sweep {os.path.basename(os.path.abspath(workdir))}",
        "",
        f"`--config {sweep['config']}`" + "".join(f" `--set {k}={v}`" for k, v in sweep["sets"].items()),
        "",
        table,
        "",
        "Sizes: `MiB (paper)` counts W bits per Linear weight, E bits per embedding and fp32 for the rest, "
        "as the paper does; `MiB (packed)` is what the packed file stores. Ratios are the teacher's size "
        "over the student's by the same convention. `time`: wall time of the job's `train.main` runs.",
        "",
    ]
    with open(os.path.join(workdir, "sweep.md"), "w") as f:
        f.write("\n".join(lines))
    plot_tradeoff(
        rows,
        metric,
        os.path.join(workdir, "tradeoff.png"),
        title=f"Sweep {os.path.basename(os.path.abspath(workdir))}: test {metric} vs compression ({sweep['config']})",
    )
    return rows
