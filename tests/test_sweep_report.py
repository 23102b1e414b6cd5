"""train.sweep's report: tables, Pareto front, plot."""

import csv
import json
from pathlib import Path

from tests.sweep_helpers import _results, _write, at_repo_root  # noqa: F401 - an autouse fixture: paths are repo-relative
from train.sweeps import plot, report

# ---------------------------------------------------------------- the report


def _summary(wea, layers, distill="DQ"):
    return {"wea": wea, "method": "dq_bart", "distill": distill, "layers": layers, "metric": "rougeLsum"}


def _make_sweep(wd: Path, points: list[dict], runs: dict) -> None:
    """sweep.json plus results.json for points that have `results`."""
    _write(
        wd / "sweep.json",
        {
            "config": "configs/xsum.py",
            "sets": {"train.epochs": "3"},
            "teachers": [{"name": "teacher", "overrides": {"stages": "teacher"}, "command": "..."}],
            "points": [
                {"name": p["name"], "overrides": {}, "teacher": "teacher", "summary": p["summary"], "command": "..."}
                for p in points
            ],
            "runs": runs,
        },
    )
    for p in points:
        if p.get("results"):
            _write(wd / p["name"] / "results.json", p["results"])


TT = {"rouge1": 42.5, "rouge2": 19.25, "rougeL": 34.5, "rougeLsum": 34.75}


def test_report_tables_are_exact(tmp_path):
    wd = tmp_path / "s"
    _make_sweep(
        wd,
        [
            {
                "name": "webits2_layers6-6",
                "summary": _summary("2-2-8", "6-6"),
                "results": _results(
                    13.4343,
                    39.6,
                    187.0,
                    2.845,
                    {"rouge1": 40.125, "rouge2": 17.5, "rougeL": 32.25, "rougeLsum": 32.5},
                    TT,
                    dev=33.0,
                ),
            },
            {"name": "webits8_layers6-6", "summary": _summary("8-8-8", "6-6")},
            {
                "name": "webits2_layers6-3",
                "summary": _summary("2-2-8", "6-3", "quant-only"),
                "results": _results(
                    16.0, 33.25, 180.5, 2.9473, {"rouge1": 38.0, "rouge2": 16.0, "rougeL": 30.0, "rougeLsum": 30.5}, TT
                ),
            },
            {"name": "webits2_layers6-1", "summary": _summary("2-2-8", "6-1")},
        ],
        runs={
            "teacher": {"status": "done", "seconds": 100.04},
            "webits2_layers6-6": {"status": "done", "seconds": 50.25},
            "webits8_layers6-6": {"status": "failed", "returncode": 1, "seconds": 3.5},
            "webits2_layers6-3": {"status": "done", "seconds": 40.0},
        },
    )
    _write(wd / "teacher" / "results.json", {"teacher_dev": {"rougeLsum": 36.5, "step": 100}})
    _write(wd / "teacher" / "teacher_hf" / "config.json", {"encoder_layers": 6, "decoder_layers": 6})
    # results.json has no student_dev when the distill stage finished in an earlier invocation
    _write(
        wd / "webits2_layers6-3" / "metrics.jsonl",
        "\n".join(
            json.dumps(r)
            for r in [
                {"stage": "distill", "split": "dev", "step": 5, "rougeLsum": 30.0},
                {"stage": "distill", "split": "train", "step": 5, "loss": 1.0},
                {"stage": "distill", "split": "dev", "step": 10, "rougeLsum": 31.5},
            ]
        )
        + "\n",
    )

    rows = report.write_report(str(wd))
    assert [r["point"] for r in rows] == [
        "teacher",
        "webits2_layers6-6",
        "webits8_layers6-6",
        "webits2_layers6-3",
        "webits2_layers6-1",
    ]
    assert (wd / "sweep.csv").read_text().splitlines() == [
        "point,status,wea_bits,method,distill,layers,size_mib,compression_ratio,packed_mib,packed_compression_ratio,"
        "dev_rougeLsum,test_rouge1,test_rouge2,test_rougeL,test_rougeLsum,train_time_s",
        "teacher,done,32-32-32,-,teacher,6-6,532.0000,1.0000,532.0000,1.0000,36.5000,42.5000,19.2500,34.5000,"
        "34.7500,100.0",
        "webits2_layers6-6,done,2-2-8,dq_bart,DQ,6-6,39.6000,13.4343,187.0000,2.8450,33.0000,40.1250,17.5000,"
        "32.2500,32.5000,50.2",
        "webits8_layers6-6,failed (exit 1),8-8-8,dq_bart,DQ,6-6,,,,,,,,,,3.5",
        "webits2_layers6-3,done,2-2-8,dq_bart,quant-only,6-3,33.2500,16.0000,180.5000,2.9473,31.5000,38.0000,"
        "16.0000,30.0000,30.5000,40.0",
        "webits2_layers6-1,not run,2-2-8,dq_bart,DQ,6-1,,,,,,,,,,",
    ]
    with open(wd / "sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == 5
    md = (wd / "sweep.md").read_text().splitlines()
    assert md[:3] == ["# Sweep s", "", "`--config configs/xsum.py` `--set train.epochs=3`"]
    assert md[4:11] == [
        "| point | status | W-E-A | method | distill | E-D | MiB (paper) | ratio (paper) | MiB (packed) | "
        "ratio (packed) | dev rougeLsum | test rouge1 | test rouge2 | test rougeL | test rougeLsum | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| teacher | done | 32-32-32 | - | teacher | 6-6 | 532.00 | 1.0x | 532.00 | 1.0x | 36.50 | 42.50 | 19.25 | "
        "34.50 | 34.75 | 100 |",
        "| webits2_layers6-6 | done | 2-2-8 | dq_bart | DQ | 6-6 | 39.60 | 13.4x | 187.00 | 2.8x | 33.00 | 40.12 | "
        "17.50 | 32.25 | 32.50 | 50 |",
        "| webits8_layers6-6 | failed (exit 1) | 8-8-8 | dq_bart | DQ | 6-6 | - | - | - | - | - | - | - | - | - | 4 |",
        "| webits2_layers6-3 | done | 2-2-8 | dq_bart | quant-only | 6-3 | 33.25 | 16.0x | 180.50 | 2.9x | 31.50 | "
        "38.00 | 16.00 | 30.00 | 30.50 | 40 |",
        "| webits2_layers6-1 | not run | 2-2-8 | dq_bart | DQ | 6-1 | - | - | - | - | - | - | - | - | - | - |",
    ]
    assert (wd / "tradeoff.png").stat().st_size > 20_000


def test_pareto_front_membership():
    xy = [
        (3.8, 35.2),  # 0 front: best metric overall
        (4.6, 33.9),  # 1 dominated by 2 (more compression and a better metric)
        (13.4, 34.0),  # 2 front
        (13.4, 33.0),  # 3 dominated by 2 (same ratio, lower metric)
        (16.0, 32.8),  # 4 front
        (18.7, 29.5),  # 5 front: most compression
        (10.0, 30.0),  # 6 dominated by 2 and 4
        (16.0, 32.8),
    ]  # 7 a tie with 4: both on the front
    assert plot.pareto_front(xy) == [0, 2, 4, 7, 5]
    assert plot.pareto_front([]) == [] and plot.pareto_front([(2.0, 1.0)]) == [0]


XSUM_LIKE = [  # (name, W-E-A, E-D, ratio, MiB, rougeLsum)
    ("webits8_layers6-6", "8-8-8", "6-6", 3.85, 138.1, 35.32),
    ("webits8_layers6-3", "8-8-8", "6-3", 4.62, 115.2, 33.91),
    ("webits8_layers6-1", "8-8-8", "6-1", 5.31, 100.2, 30.54),
    ("webits4_layers6-6", "4-4-8", "6-6", 7.33, 72.6, 35.01),
    ("webits2_layers6-6", "2-2-8", "6-6", 13.43, 39.6, 34.02),
    ("webits2_layers6-3", "2-2-8", "6-3", 16.01, 33.2, 32.84),
    ("webits2_layers6-2", "2-2-8", "6-2", 17.28, 30.8, 31.62),
    ("webits2_layers6-1", "2-2-8", "6-1", 18.73, 28.4, 29.48),
]


def make_xsum_like_sweep(wd: Path) -> None:
    """A realistic-looking synthetic BART-base XSum sweep (paper-convention sizes)."""
    tt = {"rouge1": 42.13, "rouge2": 19.24, "rougeL": 34.21, "rougeLsum": 34.86}
    points = [
        {
            "name": n,
            "summary": _summary(w, layers),
            "results": _results(
                r,
                mib,
                mib * 1.3 + 147,
                532 / (mib * 1.3 + 147),
                {"rouge1": m + 7.1, "rouge2": m - 15.9, "rougeL": m - 0.6, "rougeLsum": m},
                tt,
                dev=m + 0.4,
            ),
        }
        for n, w, layers, r, mib, m in XSUM_LIKE
    ]
    runs = {n: {"status": "done", "seconds": 3600 * (1 + mib / 140)} for n, _, _, _, mib, _ in XSUM_LIKE}
    _make_sweep(wd, points, runs={"teacher": {"status": "done", "seconds": 9000.0}, **runs})
    _write(wd / "teacher" / "results.json", {"teacher_dev": {"rougeLsum": 35.31, "step": 20000}})
    _write(wd / "teacher" / "teacher_hf" / "config.json", {"encoder_layers": 6, "decoder_layers": 6})


def test_report_plot_of_a_realistic_sweep(tmp_path):
    make_xsum_like_sweep(tmp_path)
    rows = report.write_report(str(tmp_path))
    assert len(rows) == 9 and (tmp_path / "tradeoff.png").stat().st_size > 40_000
    xy = [(r["compression_ratio"], r["test_rougeLsum"]) for r in rows[1:]]
    assert [rows[1 + i]["point"] for i in plot.pareto_front(xy)] == [
        "webits8_layers6-6",
        "webits4_layers6-6",
        "webits2_layers6-6",
        "webits2_layers6-3",
        "webits2_layers6-2",
        "webits2_layers6-1",
    ]
