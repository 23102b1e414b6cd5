"""The sweep's report: `sweep.csv`, `sweep.md` and `tradeoff.png` (quality against
compression, log scale, points labeled, the teacher as a reference line, the Pareto front
marked) from `DIR/sweep.json` and each point's `results.json`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Iterable, Sequence

from train.sweep import METRIC_ORDER, TEACHER_DIR, _read_json, is_finished, load_sweep

def pareto_front(xy: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (at least as large in both coordinates,
    larger in one): the best metric for a given compression. Sorted by x."""
    front = [i for i, (x, y) in enumerate(xy)
             if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for x2, y2 in xy)]
    return sorted(front, key=lambda i: (xy[i][0], xy[i][1]))


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
        cfg = _read_json(os.path.join(d, "teacher_hf", "config.json"))
        if cfg:
            return f"{cfg.get('encoder_layers')}-{cfg.get('decoder_layers')}"
    return None


def collect_rows(workdir: str) -> tuple[list[dict], list[str], str]:
    """One row per teacher and per point (sweep.json order): (rows, test metric keys, eval metric)."""
    sweep = load_sweep(workdir)
    runs = sweep.get("runs", {})
    results = {p["name"]: _read_json(os.path.join(workdir, p["name"], "results.json")) for p in sweep["points"]}
    metric = next((p["summary"]["metric"] for p in sweep["points"]), "rougeLsum")
    keys = set()
    for r in results.values():
        keys |= set(_test_scores((r or {}).get("student_test"))) | set(_test_scores((r or {}).get("teacher_test")))
    test_keys = [k for k in METRIC_ORDER if k in keys] + sorted(keys - set(METRIC_ORDER))

    def row(point, status, wea, method, distill, layers, size, ratio, packed, p_ratio, dev, test, seconds):
        r = {"point": point, "status": status, "wea_bits": wea, "method": method, "distill": distill,
             "layers": layers, "size_mib": size, "compression_ratio": ratio, "packed_mib": packed,
             "packed_compression_ratio": p_ratio, f"dev_{metric}": dev}
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
        t_res = _read_json(os.path.join(t_dir, "results.json")) if trained else None
        size = (first or t_res or {}).get("size", {})
        dev = ((t_res or {}).get("teacher_dev") or {}).get(metric)
        if dev is None and trained:
            dev = _best_dev(t_dir, "teacher", metric)
        status = _status(workdir, t_name, runs) if trained else ("done" if first else "not run")
        dirs = ([t_dir] if trained else []) + [os.path.join(workdir, m) for m in members]
        rows.append(row(t_name, status, "32-32-32", "-", "teacher", _teacher_layers(dirs), size.get("teacher_mib"),
                        1.0 if size else None, size.get("teacher_mib"), 1.0 if size else None, dev,
                        _test_scores((first or {}).get("teacher_test")),
                        runs.get(t_name, {}).get("seconds") if trained else None))
    for p in sweep["points"]:
        r, s = results[p["name"]] or {}, p["summary"]
        size = r.get("size", {})
        dev = (r.get("student_dev") or {}).get(metric)
        if dev is None and r:
            dev = _best_dev(os.path.join(workdir, p["name"]), "distill", metric)
        rows.append(row(p["name"], _status(workdir, p["name"], runs), s["wea"], s["method"], s["distill"],
                        s["layers"], size.get("student_mib"), size.get("compression_ratio"),
                        size.get("packed_student_mib"), size.get("packed_compression_ratio"), dev,
                        _test_scores(r.get("student_test")), runs.get(p["name"], {}).get("seconds")))
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
    fixed = {"point": "point", "status": "status", "wea_bits": "W-E-A", "method": "method", "distill": "distill",
             "layers": "E-D", "size_mib": "MiB (paper)", "compression_ratio": "ratio (paper)",
             "packed_mib": "MiB (packed)", "packed_compression_ratio": "ratio (packed)",
             "train_time_s": "time (s)"}
    if k in fixed:
        return fixed[k]
    return f"dev {metric}" if k.startswith("dev_") else f"test {k[len('test_'):]}"


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
    lines = [f"# Sweep {os.path.basename(os.path.abspath(workdir))}", "",
             f"`--config {sweep['config']}`" + "".join(f" `--set {k}={v}`" for k, v in sweep["sets"].items()), "",
             "| " + " | ".join(_md_header(k, metric) for k in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_md_value(k, r[k]) for k in cols) + " |" for r in rows]
    lines += ["", "Sizes: `MiB (paper)` counts W bits per Linear weight, E bits per embedding and fp32 for the rest, "
              "as the paper does; `MiB (packed)` is what the packed file stores. Ratios are the teacher's size "
              "over the student's by the same convention. `time`: wall time of the job's `train.main` runs.", ""]
    with open(os.path.join(workdir, "sweep.md"), "w") as f:
        f.write("\n".join(lines))
    plot_tradeoff(rows, metric, os.path.join(workdir, "tradeoff.png"),
                  title=f"Sweep {os.path.basename(os.path.abspath(workdir))}: test {metric} vs compression "
                        f"({sweep['config']})")
    return rows


def _place_labels(ax, fig, xy, labels, obstacles=(), avoid=(), pad_px: float = 7.0) -> None:
    """Puts each label next to its point where it overlaps no other label, marker, obstacle box,
    point to avoid (samples of a line) or the axes edge: candidate offsets nearest first; far
    ones get a leader line."""
    renderer = fig.canvas.get_renderer()
    markers = [ax.transData.transform(p) for p in list(xy) + list(avoid)]
    placed, box = list(obstacles), ax.get_window_extent(renderer)
    near = [(7, 5, "left", "bottom"), (7, -5, "left", "top"), (-7, 5, "right", "bottom"),
            (-7, -5, "right", "top"), (0, 10, "center", "bottom"), (0, -10, "center", "top")]
    candidates = near + [(dx * k, dy * k * 1.2, ha, va) for k in (2.2, 3.6, 5.2, 7.0) for dx, dy, ha, va in near]

    def cost(bb):
        hits = sum(bb.overlaps(q) for q in placed)
        hits += sum(bb.x0 - pad_px < m[0] < bb.x1 + pad_px and bb.y0 - pad_px < m[1] < bb.y1 + pad_px
                    for m in markers)
        return hits + (0 if box.x0 <= bb.x0 and bb.x1 <= box.x1 and box.y0 <= bb.y0 and bb.y1 <= box.y1 else 5)

    for (x, y), text in zip(xy, labels):
        scored = []
        for i, (dx, dy, ha, va) in enumerate(candidates):
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8)
            bb = ann.get_window_extent(renderer).expanded(1.04, 1.15)
            ann.remove()
            scored.append((cost(bb), i, bb))
            if scored[-1][0] == 0:
                break
        c, i, bb = min(scored)
        dx, dy, ha, va = candidates[i]
        arrow = dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=1, shrinkB=4) if i >= len(near) else None
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                    color="0.1", arrowprops=arrow, zorder=5)
        placed.append(bb)


def _point_labels(rows: list[dict]) -> list[str]:
    """'W-E-A, E-D', plus the distill kind and method where those tell points apart; the point
    name where nothing shown does."""
    def label(r, fields):
        return ", ".join(str(r[f]) for f in fields)
    for fields in (("wea_bits", "layers"), ("wea_bits", "layers", "distill"), ("wea_bits", "layers", "method"),
                   ("wea_bits", "layers", "distill", "method")):
        labels = [label(r, fields) for r in rows]
        if len(set(labels)) == len(labels):
            return labels
    return [label(r, ("wea_bits", "layers")) if labels.count(lab) == 1 else r["point"] for r, lab in zip(rows, labels)]


def plot_tradeoff(rows: list[dict], metric: str, path: str, title: str = "") -> None:
    """Test metric against the paper-convention compression ratio (log x): a labeled marker
    per finished point, colored by W-E-A; the Pareto front; each teacher as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    key = f"test_{metric}"
    students = [r for r in rows if r["distill"] != "teacher" and r["compression_ratio"] and r.get(key) is not None]
    teachers = [r for r in rows if r["distill"] == "teacher" and r.get(key) is not None]
    extra = max(0, len(students) - 10)  # more room (and smaller labels) for many points
    fig, ax = plt.subplots(figsize=(8.5 + min(5.0, 0.22 * extra), 5.5 + min(3.5, 0.14 * extra)), dpi=130)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (teacher size / student size, paper convention), log scale")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title or f"{metric} vs compression", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    if not students and not teachers:
        ax.text(0.5, 0.5, "no finished points yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(1, 100)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return
    xy = [(r["compression_ratio"], r[key]) for r in students]
    groups = list(dict.fromkeys(r["wea_bits"] for r in students))
    colors = plt.get_cmap("tab10")
    for gi, g in enumerate(groups):
        pts = [p for p, r in zip(xy, students) if r["wea_bits"] == g]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=42, color=colors(gi % 10), zorder=3,
                   edgecolor="white", linewidth=0.6, label=f"student W-E-A {g}")
    front = pareto_front(xy)
    if front:  # one artist, so the legend shows the line with the ring
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "-o", color="black", lw=1.2, alpha=0.85,
                markersize=12, markerfacecolor="none", markeredgewidth=1.4, zorder=4,
                label="Pareto front (best metric for its compression)")
    for ti, t in enumerate(teachers):
        name = "teacher" if len(teachers) == 1 else t["point"]
        layers = f", {t['layers']}" if t["layers"] else ""
        ax.axhline(t[key], ls="--", color=("0.35", "tab:brown", "tab:olive", "tab:cyan")[ti % 4], lw=1.1,
                   zorder=1, label=f"{name} (fp32{layers}): {t[key]:.2f}")
    ys = [p[1] for p in xy] + [t[key] for t in teachers]
    xs = [p[0] for p in xy] or [1.0]
    span = (max(ys) - min(ys)) or max(1.0, abs(max(ys)) * 0.05)
    ax.set_ylim(min(ys) - 0.12 * span, max(ys) + 0.22 * span)
    ax.set_xlim(min(xs) / 1.35, max(xs) * 1.5)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    # below the axes, so it never hides a point
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.canvas.draw()
    labels = _point_labels(students)
    # the front's line is an obstacle too: sample it densely in display space
    line = [tuple(xy[i]) for i in front]
    along = [(10 ** (math.log10(a[0]) * (1 - t) + math.log10(b[0]) * t), a[1] * (1 - t) + b[1] * t)
             for a, b in zip(line, line[1:]) for t in (k / 12 for k in range(1, 12))]
    _place_labels(ax, fig, xy, labels, avoid=along)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
