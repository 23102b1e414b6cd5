"""The table a run prints at the end: quality, size and compression of teacher and student."""


def print_results(results: dict) -> None:
    size = results.get("size", {})
    metric_keys = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu")
    rows = []
    for who in ("teacher", "student"):
        test = results.get(f"{who}_test") or {}
        mib = size.get(f"{who}_mib")
        ratio = 1.0 if who == "teacher" else size.get("compression_ratio")
        packed = size.get("teacher_mib") if who == "teacher" else size.get("packed_student_mib")
        p_ratio = 1.0 if who == "teacher" else size.get("packed_compression_ratio")
        rows.append([who] + [f"{test[k]:.2f}" if k in test else "-" for k in metric_keys]
                    + [f"{mib:.2f}" if mib is not None else "-", f"{ratio:.1f}x" if ratio else "-",
                       f"{packed:.2f}" if packed is not None else "-", f"{p_ratio:.1f}x" if p_ratio else "-"])
    header = ["model", *metric_keys, "MiB (paper)", "ratio (paper)", "MiB (packed file)", "ratio (packed)"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    print(f"\nresults: {results.get('workdir')}/results.json")
