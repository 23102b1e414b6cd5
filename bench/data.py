"""Data loading + tokenization at the paper's scale: today's path against the tokenization cache.

    python -m bench.data [--corpus xsum|cnn_dm|all] [--pairs N] [--today-on-cnn] [--num-proc N]

Corpora, written to a temporary directory (never into the repo) before anything is timed:
- `xsum`: 204,000 pairs, `<shared>/xsum/validation.jsonl` (1000 rows) repeated 204 times;
- `cnn_dm`: 287,000 pairs (CNN/DailyMail's size), `<shared>/cnn_dailymail/validation_mini100.jsonl`
  (100 rows) repeated 2870 times.
`<shared>` is `$DQ_JAX_SHARED_DATA`, else `../shared/data` beside the checkout (as in the tests);
the tokenizer is `<shared>/tokenizers/bart-base_roberta-base`. `--pairs N` takes the first N rows
of the repeated file instead (quick runs).

Three measurements per corpus, each in its own fresh subprocess (so its peak RSS is its own):
- `today`: the loader as it was at revision 5859ace, `load_rows(cfg, "train")` then
  `tokenize(rows, tokenizer, cfg, "train")`, run from that revision's `dq_jax/data.py` extracted
  with `git show` into the temporary directory (no git or no such revision: the row is skipped
  with the reason). On `cnn_dm` it would need far more memory than a 24 GB machine may have, so
  it runs there only with `--today-on-cnn`.
- `cold`: `token_cache.tokenized_split(cfg, "train", tokenizer)` with an empty tokenization cache
  (`data.cache_dir` and `$DQ_JAX_CACHE`) and an empty `$HF_DATASETS_CACHE`, both fresh
  directories; `DataConfig(max_source_length=1024, max_target_length=128, num_proc=--num-proc)`.
- `cache_hit`: the same call again in a new process, with the cache directories `cold` filled.

Seconds: the data step only, from before loading the rows to a ready `Tokenized`; the
interpreter's start-up, imports (`datasets`, `transformers`, the old module), loading the
tokenizer and building the corpus are outside it. Peak RSS (MiB): the largest of the worker's
own high-water mark (`VmHWM`) and `getrusage(RUSAGE_CHILDREN).ru_maxrss`, the largest peak of
any child it has waited for (the `datasets` `num_proc` tokenization processes). So it is the
peak of the biggest single process, not the sum of processes alive at once; a forked child's
peak counts the parent's pages it shares at fork time. It is read right after the data step,
before the checks below touch any page. Memory-mapped cache pages the step touched count too.

Checks, after the timed step: `cold` and `cache_hit` must give identical token arrays (row count
and a digest of every row's source and target ids); `today` and `cold` must agree on the ids of
the first 1000 rows, where today's rows whose document or summary is empty or whitespace are
skipped first (the new path drops them: 1 per 1000 in XSum's validation split). The table shows
both agreements, and whether today's and the new path's digests of all the rows match too.
A `cold` worker also reports where its time went (hashing the files, `load_split`, `map`,
`save_to_disk`, opening the entry).

The issue's floors, at full size, each side in its own process: `cold` at least 2x faster than
`today`, `cache_hit` under 10 s, peak RSS under 3 GB for `cold` and for `cache_hit`. `today` was
measured at 109 s and 13.0 GB on XSum-sized data on 2 cores. This module measures; it does not
assume they hold.

Prints the CPU line and a table per corpus and writes bench/results/data.json: top-level `cpu`,
then xsum's `seconds` and `peak_rss_mib` ({"today", "cold", "cache_hit"}; null when not
measured), `speedup` ({"cold vs today", "cache_hit vs today"}: today's seconds / the row's, for
the pairs measured), `status`, `agreement`, `phases` and `workers`; cnn_dm's the same under
`"cnn_dm"`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from bench.common import (
    WorkerError,
    cpu,
    cpu_line,
    reply,
    run_worker,
    speedups,
    worker_env,
    write_json,
)
from bench.data_corpus import CORPORA, TOKENIZER, build_corpus, extract_old, shared_data
from bench.data_report import report
from bench.data_workers import KINDS, worker_new, worker_today

# ---------------------------------------------------------------------------------------------
# Driver side


def compare_heads(a: str, b: str) -> dict:
    """Rows of the two dumps whose source and target ids are equal, out of the rows both have."""
    import numpy as np

    x, y = np.load(a), np.load(b)
    rows = lambda d, name: [
        d[f"{name}_values"][s:e] for s, e in zip(d[f"{name}_offsets"][:-1], d[f"{name}_offsets"][1:])
    ]
    xs, xt, ys, yt = rows(x, "source"), rows(x, "target"), rows(y, "source"), rows(y, "target")
    n = min(len(xs), len(ys))
    equal = [np.array_equal(xs[i], ys[i]) and np.array_equal(xt[i], yt[i]) for i in range(n)]
    first_diff = next((i for i, e in enumerate(equal) if not e), None)
    return {"rows": n, "equal": int(sum(equal)), "first_difference": first_diff}


def _run(kind: str, argv: list[str], env: dict) -> dict:
    try:
        return {"status": "ok", **run_worker("bench.data", ["--worker", kind, *argv], env)}
    except WorkerError as e:
        return {"status": f"failed: {str(e).splitlines()[0][:160]}", "error": str(e)}


def run_corpus(
    name: str,
    pairs: int,
    work: str,
    *,
    run_today: bool,
    why_not_today: str | None,
    old_path: str | None,
    num_proc: int,
    env: dict,
) -> dict:
    """Builds the corpus in `work`, runs the three workers, checks them; the corpus's record."""
    shared = shared_data()
    src, _ = CORPORA[name]
    corpus = os.path.join(work, f"{name}_train.jsonl")
    build_corpus(os.path.join(shared, src), pairs, corpus)
    tokenizer = os.path.join(shared, TOKENIZER)
    cache, hf_cache = os.path.join(work, f"{name}_cache"), os.path.join(work, f"{name}_hf_datasets")
    new_env = {**env, "DQ_JAX_CACHE": cache, "HF_DATASETS_CACHE": hf_cache}
    heads = {k: os.path.join(work, f"{name}_{k}_head.npz") for k in ("today", "cold")}
    runs: dict[str, dict] = {}
    if old_path is None or not run_today:
        runs["today"] = {"status": f"skipped: {why_not_today}"}
    else:
        today_env = {**env, "HF_DATASETS_CACHE": os.path.join(work, f"{name}_hf_today")}
        runs["today"] = _run(
            "today",
            ["--corpus-file", corpus, "--old-module", old_path, "--tokenizer", tokenizer, "--ids-out", heads["today"]],
            today_env,
        )
    new_argv = ["--corpus-file", corpus, "--cache-dir", cache, "--tokenizer", tokenizer, "--num-proc", str(num_proc)]
    runs["cold"] = _run("cold", new_argv + ["--ids-out", heads["cold"]], new_env)
    runs["cache_hit"] = (
        _run("cache_hit", new_argv, new_env) if runs["cold"]["status"] == "ok" else {"status": "skipped: cold failed"}
    )
    ok = {k: r for k, r in runs.items() if r["status"] == "ok"}
    agreement = {}
    if "cold" in ok and "cache_hit" in ok:
        c, h = ok["cold"], ok["cache_hit"]
        agreement["cache_hit vs cold"] = {
            "identical": c["rows"] == h["rows"] and c["digest"] == h["digest"],
            "rows": [c["rows"], h["rows"]],
        }
    if "cold" in ok and "today" in ok:
        t, c = ok["today"], ok["cold"]
        agreement["cold vs today"] = {
            **compare_heads(heads["today"], heads["cold"]),
            "all_rows_equal": t["rows_compared"] == c["rows"] and t["digest"] == c["digest"],
            "today_rows": t["rows"],
            "today_dropped_empty": t["dropped_empty"],
            "new_rows": c["rows"],
        }
    for p in heads.values():
        if os.path.exists(p):
            os.remove(p)
    seconds = {k: runs[k].get("seconds") for k in KINDS}
    rss = {k: runs[k].get("peak_rss_mib") for k in KINDS}
    return {
        "corpus": name,
        "source_file": src,
        "pairs": pairs,
        "num_proc": num_proc,
        "seconds": seconds,
        "peak_rss_mib": rss,
        "speedup": speedups({k: seconds[k] for k in ("cold", "cache_hit")}, {"today": seconds["today"]}),
        "status": {k: runs[k]["status"] for k in KINDS},
        "agreement": agreement,
        "phases": {k: runs[k].get("phases") for k in KINDS if runs[k].get("phases")},
        "workers": {k: {kk: v for kk, v in r.items() if kk != "phases"} for k, r in runs.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="all", choices=sorted(CORPORA) + ["all"])
    ap.add_argument("--pairs", type=int, help="corpus size instead of the paper's (quick runs)")
    ap.add_argument("--today-on-cnn", action="store_true", help="also run today's path on cnn_dm (needs a lot of RAM)")
    ap.add_argument("--num-proc", type=int, default=0, help="DataConfig.num_proc of the new path (0: all cores)")
    ap.add_argument("--worker", choices=KINDS)
    ap.add_argument("--corpus-file")
    ap.add_argument("--old-module")
    ap.add_argument("--tokenizer")
    ap.add_argument("--cache-dir")
    ap.add_argument("--ids-out")
    args = ap.parse_args(argv)
    if args.worker:
        result = (
            worker_today(args.corpus_file, args.old_module, args.tokenizer, args.ids_out)
            if args.worker == "today"
            else worker_new(args.corpus_file, args.cache_dir, args.tokenizer, args.num_proc, args.ids_out)
        )
        reply(result)  # its peak_rss_mib is the worker's own, children included
        return
    shared = shared_data()
    if not os.path.isdir(shared):
        sys.exit(f"{shared} not found: the bench reads ../shared/data beside the checkout (or $DQ_JAX_SHARED_DATA).")
    env = worker_env()
    env.setdefault("HF_HUB_OFFLINE", "1")
    rec = cpu(env)
    print(cpu_line(rec))
    names = sorted(CORPORA, reverse=True) if args.corpus == "all" else [args.corpus]  # xsum first
    out: dict = {"cpu": rec, "tokenizers_parallelism": env.get("TOKENIZERS_PARALLELISM")}
    work = tempfile.mkdtemp(prefix="dq_jax_bench_data_")
    try:
        old_path, why_old = extract_old(work)
        for name in names:
            pairs = args.pairs or CORPORA[name][1]
            run_today, why = old_path is not None, why_old
            if run_today and name == "cnn_dm" and not args.today_on_cnn:
                run_today, why = (
                    False,
                    ("today's path on cnn_dm needs far more RAM than this machine may have; run with --today-on-cnn"),
                )
            r = run_corpus(
                name,
                pairs,
                work,
                run_today=run_today,
                why_not_today=why,
                old_path=old_path,
                num_proc=args.num_proc,
                env=env,
            )
            report(r)
            if name == "xsum":
                out.update(r)
            else:
                out[name] = r
            for f in os.listdir(work):  # this corpus's files and caches: disk is not free at full size
                if f.startswith(name):
                    p = os.path.join(work, f)
                    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("wrote", write_json("data", out))


if __name__ == "__main__":
    main()
