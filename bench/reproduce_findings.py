"""bench.reproduce's verdicts: each of the papers' claims checked against the numbers of one data
setting, and reproduce.md (the table, then the findings per setting)."""

from __future__ import annotations

from bench.reproduce_table import FULL, table_rows
from train.sweeps.plot import pareto_front


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

    claim(
        "8-bit DQ is close to the teacher (at most 1 point below it)",
        ["dq_8-8-8"],
        lambda: teacher - s["dq_8-8-8"].mean <= 1.0,
        lambda: (
            f"teacher {teacher:.2f}, DQ 8-8-8 {s['dq_8-8-8'].text()} "
            f"(quantization only 8-8-8 {s['qonly_8-8-8'].text() if s.get('qonly_8-8-8') else '-'})"
        ),
    )
    claim(
        "2-bit quantization without distillation is clearly below 2-bit DQ (mean gap > 1 point and every "
        "DQ seed above every quantization-only seed)",
        ["qonly_2-2-8", "dq_2-2-8"],
        lambda: (
            s["dq_2-2-8"].mean - s["qonly_2-2-8"].mean > 1.0
            and min(s["dq_2-2-8"].scores) > max(s["qonly_2-2-8"].scores)
        ),
        lambda: (
            f"quantization only {s['qonly_2-2-8'].text()}, DQ {s['dq_2-2-8'].text()}: gap "
            f"{s['dq_2-2-8'].mean - s['qonly_2-2-8'].mean:+.2f}"
        ),
    )
    dq_rows = ["dq_8-8-8", "dq_2-2-8", shallow, one]
    fp_rows = [r.name for r in table_rows(enc, dec) if r.kind == "distillation only"]

    def pareto_detail():
        parts = []
        for d in fp_rows:
            better = [q for q in dq_rows if s[q].ratio >= s[d].ratio and s[q].mean >= s[d].mean]
            best = max((q for q in dq_rows if s[q].ratio >= s[d].ratio), key=lambda q: s[q].mean)
            parts.append(
                f"distillation only {d.split('_')[-1]} ({s[d].ratio:.1f}x) {s[d].text()}: "
                + (
                    f"matched by DQ {better[0].removeprefix('dq_')} ({s[better[0]].ratio:.1f}x, "
                    f"{s[better[0]].mean:.2f})"
                    if better
                    else f"no DQ point as good at its compression or more (best DQ "
                    f"{best.removeprefix('dq_')}, {s[best].mean:.2f})"
                )
            )
        names = dq_rows + fp_rows
        front = [names[i] for i in pareto_front([(s[n].ratio, s[n].mean) for n in names])]
        return "; ".join(parts) + f". Pareto front (seed means): {', '.join(front)}"

    claim(
        "DQ's quality-vs-compression points are at or above distillation-only's: every full-precision "
        "student is matched by a DQ student at least as good and at least as compressed",
        dq_rows + fp_rows,
        lambda: all(any(s[q].ratio >= s[d].ratio and s[q].mean >= s[d].mean for q in dq_rows) for d in fp_rows),
        pareto_detail,
    )
    claim(
        "quality falls as decoder layers are removed (DQ 2-2-8, seed means)",
        ["dq_2-2-8", shallow, one],
        lambda: s["dq_2-2-8"].mean >= s[shallow].mean >= s[one].mean and s["dq_2-2-8"].mean > s[one].mean,
        lambda: (
            f"{enc}-{dec}: {s['dq_2-2-8'].text()}, {shallow.split('_')[-1]}: {s[shallow].text()}, "
            f"{enc}-1: {s[one].text()}"
        ),
    )
    claim(
        "TBT W2A8 is at least as good as DQ-BART 2-2-8 (seed means)",
        ["tbt_W2A8", "dq_2-2-8"],
        lambda: s["tbt_W2A8"].mean >= s["dq_2-2-8"].mean,
        lambda: (
            f"TBT W2A8 {s['tbt_W2A8'].text()}, DQ-BART 2-2-8 {s['dq_2-2-8'].text()}: "
            f"{s['tbt_W2A8'].mean - s['dq_2-2-8'].mean:+.2f}"
        ),
    )
    claim(
        "TBT W1A8 trains to a usable model (at least 80% of the teacher)",
        ["tbt_W1A8"],
        lambda: s["tbt_W1A8"].mean >= 0.8 * teacher,
        lambda: (
            f"TBT W1A8 {s['tbt_W1A8'].text()} = {100 * s['tbt_W1A8'].mean / teacher:.0f}% of the teacher "
            f"(W2A2 {s['tbt_W2A2'].text() if s.get('tbt_W2A2') else '-'}, "
            f"W1A1 {s['tbt_W1A1'].text() if s.get('tbt_W1A1') else '-'})"
        ),
    )
    return out


def _verdict(f: dict) -> str:
    return {True: "HOLDS", False: "DOES NOT HOLD", None: "UNDECIDED"}[f["holds"]]


def report(
    metric: str,
    teacher: float | None,
    stats: dict,
    settings: dict[str, float],
    found: dict,
    enc: int,
    dec: int,
    sets: dict,
    seeds: int,
) -> str:
    """reproduce.md: the table (seed means and spread) with a column per data setting, then the
    findings per setting."""
    head = ["student", "W-E-A", "E-D", "ratio (paper)"] + [
        f"{'full data' if name == FULL else f'{frac:.0%} of the data'}" for name, frac in settings.items()
    ]
    lines = [
        f"# The paper's findings in miniature (test {metric})",
        "",
        "Settings: "
        + ", ".join(f"`{k}={v}`" for k, v in sets.items())
        + f"; {seeds} student seeds for the 2-bit-weight rows (mean ± sample std (min-max)).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    t = "-" if teacher is None else f"{teacher:.2f}"
    lines.append(f"| teacher | 32-32-32 | {enc}-{dec} | 1.0x | " + " | ".join(t for _ in settings) + " |")
    for row in table_rows(enc, dec):
        cells = [stats.get((name, row.name)) for name in settings]
        ratio = next((c.ratio for c in cells if c), None)
        wea = "-".join(str(b or 32) for b in row.wea)
        lines.append(
            f"| {row.kind} | {wea} | {row.layers} | "
            + ("-" if ratio is None else f"{ratio:.1f}x")
            + " | "
            + " | ".join("-" if c is None else c.text() for c in cells)
            + " |"
        )
    lines += ["", "| finding | " + " | ".join(head[4:]) + " |", "|---|" + "---|" * len(settings)]
    claims = [f["claim"] for f in next(iter(found.values()))]
    for i, claim in enumerate(claims):
        lines.append(f"| {claim} | " + " | ".join(_verdict(found[name][i]) for name in settings) + " |")
    for name in settings:
        lines += ["", f"## {head[4 + list(settings).index(name)]}", ""]
        lines += [f"- {_verdict(f)}: {f['claim']}: {f['detail']}" for f in found[name]]
    return "\n".join(lines) + "\n"
