"""The table a run prints at the end: quality, size and compression of teacher and student."""

from dq_jax.inference.metrics import TASK_METRICS
from dq_jax.utils.table import format_table

_HEADERS = {"mib": "MiB (paper)", "ratio": "ratio (paper)", "packed": "MiB (packed file)", "p_ratio": "ratio (packed)"}


def _mib(v) -> str:
    return f"{v:.2f}" if v is not None else "-"


def _ratio(v) -> str:
    return f"{v:.1f}x" if v else "-"


def print_results(results: dict) -> None:
    size = results.get("size", {})
    rows = []
    for who in ("teacher", "student"):
        test = results.get(f"{who}_test") or {}
        teacher = who == "teacher"
        rows.append(
            {
                "model": who,
                **{k: _mib(test.get(k)) for k in TASK_METRICS},
                "mib": _mib(size.get(f"{who}_mib")),
                "ratio": _ratio(1.0 if teacher else size.get("compression_ratio")),
                "packed": _mib(size.get("teacher_mib" if teacher else "packed_student_mib")),
                "p_ratio": _ratio(1.0 if teacher else size.get("packed_compression_ratio")),
            }
        )
    print()
    print(format_table(rows, headers=_HEADERS))
    print(f"\nresults: {results.get('workdir')}/results.json")
