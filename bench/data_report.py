"""bench.data's output: the table of one corpus and the lines under it (failures, where the time
went, the issue's floors)."""

from __future__ import annotations

from bench.data_corpus import MAX_SOURCE, MAX_TARGET
from bench.data_workers import KINDS
from dq_jax.utils.table import format_table

FLOORS = {"cold_speedup": 2.0, "cache_hit_s": 10.0, "peak_rss_mib": 3 * 1024}


def _agree_cell(rec: dict, kind: str) -> str:
    a = rec["agreement"]
    if kind == "cold" and "cold vs today" in a:
        x = a["cold vs today"]
        return f"first {x['rows']} rows: {x['equal']} equal vs today; all rows " + (
            "equal" if x["all_rows_equal"] else "differ"
        )
    if kind == "cache_hit" and "cache_hit vs cold" in a:
        return "identical to cold" if a["cache_hit vs cold"]["identical"] else "DIFFERS from cold"
    return "-"


def table(rec: dict) -> str:
    today_s, today_rss = rec["seconds"]["today"], rec["peak_rss_mib"]["today"]
    rows = []
    for k in KINDS:
        s, m, w = rec["seconds"][k], rec["peak_rss_mib"][k], rec["workers"][k]
        rows.append(
            {
                "path": k,
                "status": rec["status"][k].split(":")[0],
                "rows": w.get("rows", "-"),
                "seconds": s if s is not None else "-",
                "peak RSS MiB": m if m is not None else "-",
                "speed-up vs today": today_s / s if s and today_s else "-",
                "RSS / today": m / today_rss if m and today_rss else "-",
                "agreement": _agree_cell(rec, k),
            }
        )
    return format_table(rows)


def floors_line(rec: dict) -> str:
    s, m = rec["seconds"], rec["peak_rss_mib"]
    parts = []
    if s["cold"] and s["today"]:
        parts.append(f"cold {s['today'] / s['cold']:.2f}x faster than today (floor {FLOORS['cold_speedup']:g}x)")
    if s["cache_hit"] is not None:
        parts.append(f"cache hit {s['cache_hit']:.2f} s (floor < {FLOORS['cache_hit_s']:g} s)")
    for k in ("cold", "cache_hit"):
        if m[k] is not None:
            parts.append(f"{k} peak RSS {m[k]:.0f} MiB (floor < {FLOORS['peak_rss_mib']} MiB)")
    return "against the issue's floors (meant for full size): " + ("; ".join(parts) or "nothing measured")


def phases_text(ph: dict, num_proc: int | None) -> str:
    """ "load_split 1.00 s, build 2.00 s (tokenize 1.90 s on 2 processes, save_to_disk 0.10 s), ..."."""
    inner = [
        f"{p} {ph[p]:.2f} s"
        + (f" on {num_proc} process{'es' if num_proc > 1 else ''}" if p == "tokenize" and num_proc else "")
        for p in ("tokenize", "save_to_disk")
        if p in ph
    ]
    return ", ".join(
        f"{p} {v:.2f} s" + (f" ({', '.join(inner)})" if p == "build" and inner else "")
        for p, v in ph.items()
        if p not in ("tokenize", "save_to_disk")
    )


def report(rec: dict) -> None:
    print(
        f"[{rec['corpus']}] {rec['pairs']} pairs ({rec['source_file']} repeated), max lengths "
        f"{MAX_SOURCE}/{MAX_TARGET}, num_proc {rec['num_proc'] or 'all cores'}"
    )
    print(table(rec))
    for k in KINDS:
        if rec["status"][k] != "ok":
            print(f"  {k}: {rec['status'][k]}")
    for k, ph in rec["phases"].items():
        print(f"  {k} time: " + phases_text(ph, rec["workers"][k].get("num_proc")))
    print("  " + floors_line(rec))
