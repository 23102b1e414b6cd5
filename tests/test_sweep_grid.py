"""train.sweeps.grid: grid syntax, named sweeps and the names of points."""

import json
import re

import pytest

from tests.sweep_helpers import at_repo_root  # noqa: F401 - an autouse fixture: configs/ paths are repo-relative
from train.sweeps import grid, plan
from train.sweeps.grid import Point

# ---------------------------------------------------------------- grid syntax and names


def test_expand_grid_is_the_product_in_order_with_readable_stable_names():
    points = grid.expand_grid(["quant.weight_bits=2,8", "student.layers=6-6, 6-3,6-1"])
    assert [p.name for p in points] == [
        "wbits2_layers6-6",
        "wbits2_layers6-3",
        "wbits2_layers6-1",
        "wbits8_layers6-6",
        "wbits8_layers6-3",
        "wbits8_layers6-1",
    ]
    assert points[2].overrides == {"quant.weight_bits": "2", "student.layers": "6-1"}
    assert grid.expand_grid(["quant.weight_bits=2,8", "student.layers=6-6,6-3,6-1"]) == points  # stable


def test_value_rules_semicolons_brackets_linked_keys_and_full_precision():
    assert grid.parse_axis("distill.weights=(1,1);(0.8,3)") == (("distill.weights",), ["(1,1)", "(0.8,3)"])
    assert grid.parse_axis("distill.weights=(1,1),(0.8,3)") == (("distill.weights",), ["(1,1)", "(0.8,3)"])
    assert grid.parse_axis("data.train_files=a.jsonl,b.jsonl;") == (("data.train_files",), ["a.jsonl,b.jsonl"])
    assert grid.parse_axis("mesh=(2,1,1),(1,2,1)")[1] == ["(2,1,1)", "(1,2,1)"]
    assert grid.parse_axis("data.name=,xsum")[1] == ["", "xsum"]
    points = grid.expand_grid(
        [
            "quant.weight_bits+quant.embed_bits=0,2",
            "distill.weights=(1,1);(0.8,3)",
            "quant.method=dq_bart",
            "distill.enabled=False",
        ]
    )
    assert [p.name for p in points] == [
        "webits32_weights1-1_method-dq_bart_distill-False",
        "webits32_weights0.8-3_method-dq_bart_distill-False",
        "webits2_weights1-1_method-dq_bart_distill-False",
        "webits2_weights0.8-3_method-dq_bart_distill-False",
    ]
    assert points[3].overrides == {
        "quant.weight_bits": "2",
        "quant.embed_bits": "2",
        "distill.weights": "(0.8,3)",
        "quant.method": "dq_bart",
        "distill.enabled": "False",
    }
    # keys with the same last component keep their full name; unsafe characters go
    names = [
        p.name
        for p in grid.expand_grid(
            ["train.steps=10", "teacher.epochs=1", "train.epochs=2", "data.test_files=/x/a b.jsonl"]
        )
    ]
    assert names == ["steps10_teacher.epochs1_train.epochs2_test_files-x-a-b.jsonl"]


def test_names_stay_unique_and_short():
    points = grid.expand_grid(["data.name=a/b,a-b"])
    assert points[0].name == "name-a-b" and points[1].name.startswith("name-a-b_") and len(points[1].name) == 17
    long = grid.expand_grid(["data.train_files=" + "x" * 200])[0].name
    assert len(long) <= 96 and long == grid.expand_grid(["data.train_files=" + "x" * 200])[0].name


@pytest.mark.parametrize(
    "grids, message",
    [
        (["quant.weight_bits"], "bad grid 'quant.weight_bits': write KEY=V1,V2"),
        (["quant.weight_bits=2,2"], "a value appears twice"),
        (["quant.weight_bits=2", "quant.weight_bits=8"], "quant.weight_bits is in more than one grid axis"),
        (["9bits=2"], "bad grid '9bits=2'"),
        (["a+a=1"], "a key appears twice"),
    ],
)
def test_bad_grid_syntax_is_one_clear_error(grids, message):
    with pytest.raises(grid.SweepError, match=message.replace("(", r"\(")):
        grid.expand_grid(grids)


def test_named_sweeps_are_lists_of_override_dicts():
    where = "--sweep s (c.sweeps.s)"
    points = grid.named_points(
        [
            {"name": "dq228", "quant.weight_bits": 2, "student.layers": "6-3"},
            {"name": "fp", "quant.weight_bits": 0, "distill.weights": (0.8, 3)},
            {"quant.method": "tbt", "train.steps": 10},
        ],
        where,
    )
    assert points == [
        Point("dq228", {"quant.weight_bits": "2", "student.layers": "6-3"}),
        Point("fp", {"quant.weight_bits": "0", "distill.weights": "(0.8,3)"}),
        Point("method-tbt_steps10", {"quant.method": "tbt", "train.steps": "10"}),
    ]
    # a derived name keeps clear of a given one
    clash = grid.named_points([{"train.steps": 10}, {"name": "steps10", "train.steps": 20}], where)
    assert clash[0].name.startswith("steps10_") and len(clash[0].name) == 16 and clash[1].name == "steps10"
    with pytest.raises(grid.SweepError, match=re.escape(f"{where}: point names must be unique; ['a'] repeat.")):
        grid.named_points([{"name": "a", "seed": 1}, {"name": "a", "seed": 2}], where)
    with pytest.raises(grid.SweepError, match=re.escape(f"{where}: point name 'bad name': use letters, digits")):
        grid.named_points([{"name": "bad name", "seed": 1}], where)
    with pytest.raises(grid.SweepError, match=re.escape(f"{where}: point name 3: use letters, digits")):
        grid.named_points([{"name": 3, "seed": 1}], where)
    for not_dicts in ("seed=1,2", ("seed=1,2",), {"seed": 1}, 3):
        with pytest.raises(grid.SweepError, match=re.escape(f"{where}: write a list of dicts of overrides")):
            grid.named_points(not_dicts, where)
    with pytest.raises(grid.SweepError, match="letters, digits"):
        Point("bad name", {})
    c = plan.build_config("configs/demo.py")
    demo = grid.named_points(c.sweeps.bits_layers, "demo")
    assert [p.name for p in demo] == [
        "webits2_layers3-3",
        "webits2_layers3-2",
        "webits2_layers3-1",
        "webits8_layers3-3",
        "webits8_layers3-2",
        "webits8_layers3-1",
    ]
    assert demo[4].overrides == {"quant.weight_bits": "8", "quant.embed_bits": "8", "student.layers": "3-2"}
    assert [p.name for p in grid.named_points(c.sweeps.dq_vs_tbt, "demo")] == [
        "dq_2-2-8",
        "tbt_W2A8",
        "tbt_W1A8",
        "tbt_W2A2",
        "tbt_W1A1",
    ]


def test_derived_names_link_keys_set_to_one_value_as_the_grid_does():
    w, e, a = "quant.weight_bits", "quant.embed_bits", "quant.act_bits"
    assert grid.point_name({w: 1, e: 1, a: 1}) == "bits1"
    assert grid.point_name({w: 1, e: 1, a: 8}) == "webits1_abits8"
    assert grid.point_name({w: 2, e: 8, a: 8}) == "wbits2_ebits8_abits8"  # no linked set shares a value
    assert grid.point_name({"student.layers": "3-1", e: 0, "seed": 3, w: "0"}) == "layers3-1_webits32_seed3"
    assert grid.point_name({w: 2, "student.layers": "6-1", e: 2}) == "webits2_layers6-1"
    assert (
        grid.point_name({w: 2, e: 2, "student.layers": "6-1"})
        == grid.expand_grid([f"{w}+{e}=2", "student.layers=6-1"])[0].name
    )
    assert grid.point_name({w: 1, e: 1, a: 1}) == grid.expand_grid([f"{w}+{e}+{a}=1"])[0].name


def test_a_named_sweep_with_grid_axes_is_their_product_named_point_first():
    points = grid.cross(
        grid.named_points([{"name": "dq", "quant.method": "dq_bart"}, {"quant.weight_bits": 1}], "s"),
        grid.expand_grid(["student.layers=3-1,3-2"]),
        "--sweep s",
    )
    assert [(p.name, p.overrides) for p in points] == [
        ("dq_layers3-1", {"quant.method": "dq_bart", "student.layers": "3-1"}),
        ("dq_layers3-2", {"quant.method": "dq_bart", "student.layers": "3-2"}),
        ("wbits1_layers3-1", {"quant.weight_bits": "1", "student.layers": "3-1"}),
        ("wbits1_layers3-2", {"quant.weight_bits": "1", "student.layers": "3-2"}),
    ]


def test_sweeps_key_does_not_disturb_the_run_spec():
    from train.settings import spec_from_config

    spec = json.loads(spec_from_config(plan.build_config("configs/demo.py")).config_json)
    assert spec["sweeps"]["bits_layers"][0] == {"quant.weight_bits": 2, "quant.embed_bits": 2, "student.layers": "3-3"}
    assert spec["sweeps"]["dq_vs_tbt"][4] == {
        "name": "tbt_W1A1",
        "quant.method": "tbt",
        "quant.weight_bits": 1,
        "quant.embed_bits": 1,
        "quant.act_bits": 1,
    }
