"""`tradeoff.png`: a sweep's test metric against compression (log scale), points labeled
where they overlap nothing, the teacher as a reference line, the Pareto front marked."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def pareto_front(xy: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (at least as large in both coordinates,
    larger in one): the best metric for a given compression. Sorted by x."""
    front = [i for i, (x, y) in enumerate(xy) if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for x2, y2 in xy)]
    return sorted(front, key=lambda i: (xy[i][0], xy[i][1]))


def _place_labels(ax, fig, xy, labels, obstacles=(), avoid=(), pad_px: float = 7.0) -> None:
    """Puts each label next to its point where it overlaps no other label, marker, obstacle box,
    point to avoid (samples of a line) or the axes edge: candidate offsets nearest first; far
    ones get a leader line."""
    renderer = fig.canvas.get_renderer()
    markers = [ax.transData.transform(p) for p in list(xy) + list(avoid)]
    placed, box = list(obstacles), ax.get_window_extent(renderer)
    near = [
        (7, 5, "left", "bottom"),
        (7, -5, "left", "top"),
        (-7, 5, "right", "bottom"),
        (-7, -5, "right", "top"),
        (0, 10, "center", "bottom"),
        (0, -10, "center", "top"),
    ]
    candidates = near + [(dx * k, dy * k * 1.2, ha, va) for k in (2.2, 3.6, 5.2, 7.0) for dx, dy, ha, va in near]

    def cost(bb):
        hits = sum(bb.overlaps(q) for q in placed)
        hits += sum(bb.x0 - pad_px < m[0] < bb.x1 + pad_px and bb.y0 - pad_px < m[1] < bb.y1 + pad_px for m in markers)
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
        _c, i, bb = min(scored)
        dx, dy, ha, va = candidates[i]
        arrow = dict(arrowstyle="-", color="0.55", lw=0.6, shrinkA=1, shrinkB=4) if i >= len(near) else None
        ax.annotate(
            text,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=8,
            color="0.1",
            arrowprops=arrow,
            zorder=5,
        )
        placed.append(bb)


def _point_labels(rows: list[dict]) -> list[str]:
    """'W-E-A, E-D', plus the distill kind and method where those tell points apart; the point
    name where nothing shown does."""

    def label(r, fields):
        return ", ".join(str(r[f]) for f in fields)

    for fields in (
        ("wea_bits", "layers"),
        ("wea_bits", "layers", "distill"),
        ("wea_bits", "layers", "method"),
        ("wea_bits", "layers", "distill", "method"),
    ):
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
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            s=42,
            color=colors(gi % 10),
            zorder=3,
            edgecolor="white",
            linewidth=0.6,
            label=f"student W-E-A {g}",
        )
    front = pareto_front(xy)
    if front:  # one artist, so the legend shows the line with the ring
        ax.plot(
            [xy[i][0] for i in front],
            [xy[i][1] for i in front],
            "-o",
            color="black",
            lw=1.2,
            alpha=0.85,
            markersize=12,
            markerfacecolor="none",
            markeredgewidth=1.4,
            zorder=4,
            label="Pareto front (best metric for its compression)",
        )
    for ti, t in enumerate(teachers):
        name = "teacher" if len(teachers) == 1 else t["point"]
        layers = f", {t['layers']}" if t["layers"] else ""
        ax.axhline(
            t[key],
            ls="--",
            color=("0.35", "tab:brown", "tab:olive", "tab:cyan")[ti % 4],
            lw=1.1,
            zorder=1,
            label=f"{name} (fp32{layers}): {t[key]:.2f}",
        )
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
    along = [
        (10 ** (math.log10(a[0]) * (1 - t) + math.log10(b[0]) * t), a[1] * (1 - t) + b[1] * t)
        for a, b in itertools.pairwise(line)
        for t in (k / 12 for k in range(1, 12))
    ]
    _place_labels(ax, fig, xy, labels, avoid=along)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
