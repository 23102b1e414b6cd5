"""Every numeric config value is range-checked (`train.config_ranges`, from `train.settings.spec_from_config`),
before any work, with one message naming the dotted key, the bad value and what it must be."""

import importlib
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs import common, demo, xsum
from train.config_ranges import RANGES
from train.settings import spec_from_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_MODULES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__", "common"))
NAN, INF = float("nan"), float("inf")

# (key, bad value, what the message says it must be)
BAD = [
    ("seed", -1, "an integer >= 0"),
    ("mesh", (1, 0, 1), "each an integer >= 1, or -1"),
    ("mesh", (2, 2), "(data, fsdp, tensor)"),
    ("mesh", (-1, -1, 1), "at most one axis may be -1"),
    ("teacher.learning_rate", 0.0, "a finite number > 0"),
    ("teacher.steps", -1, "an integer >= 0"),
    ("teacher.epochs", -1, "an integer >= 0"),
    ("quant.weight_clip", 0.0, "> 0"),
    ("quant.act_clip", -1.0, "> 0"),
    ("quant.mse_steps", 0, "an integer >= 1"),
    ("distill.weights", (1.0, -0.5), "(logits, intermediate), each a finite number >= 0"),
    ("distill.weights", (1.0, NAN), "a finite number >= 0"),
    ("distill.weights", (1.0,), "(logits, intermediate)"),
    ("data.max_source_length", 2, "an integer >= 3"),
    ("data.max_target_length", 0, "an integer >= 3"),
    ("data.max_examples", -1, "an integer >= 0"),
    ("data.min_bucket", 0, "an integer >= 1"),
    ("data.num_proc", -1, "an integer >= 0"),
    ("train.batch_size", 0, "an integer >= 1"),
    ("train.grad_accum", 0, "an integer >= 1"),
    ("train.learning_rate", 0.0, "a finite number > 0"),
    ("train.learning_rate", INF, "a finite number > 0"),
    ("train.learning_rate", NAN, "a finite number > 0"),
    ("train.weight_decay", -0.1, ">= 0"),
    ("train.warmup_ratio", 1.0, "in [0, 1)"),
    ("train.warmup_ratio", -0.1, "in [0, 1)"),
    ("train.grad_clip", -1.0, ">= 0"),
    ("train.epochs", -1, "an integer >= 0"),
    ("train.steps", -5, "an integer >= 0"),
    ("train.log_every", 0, "an integer >= 1"),
    ("train.eval_every", -1, "an integer >= 0"),
    ("train.checkpoint_every", 0, "an integer >= 1"),
    ("eval.batch_size", 0, "an integer >= 1"),
    ("eval.num_beams", 0, "an integer >= 1"),
    ("eval.max_length", 1, "an integer >= 2"),
    ("eval.min_length", -1, "an integer >= 0"),
    ("eval.length_penalty", INF, "a finite number"),
    ("eval.no_repeat_ngram_size", -1, "an integer >= 0"),
    ("eval.max_examples", -1, "an integer >= 0"),
    ("distributed.num_processes", -1, "an integer >= 0"),
    ("distributed.process_id", -2, "an integer >= -1"),
    ("distributed.heartbeat_timeout", 0, "an integer >= 1"),
    ("distributed.initialization_timeout", 0, "an integer >= 1"),
]


def _set(c, key, value):
    *sections, name = key.split(".")
    for s in sections:
        c = c[s]
    c[name] = value


def _config(**overrides):
    c = demo.get_config()
    for key, value in overrides.items():
        _set(c, key.replace("__", "."), value)
    return c


@pytest.mark.parametrize("key,value,must", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_value_is_one_error_naming_the_key(key, value, must):
    c = demo.get_config()
    _set(c, key, value)
    with pytest.raises(ValueError) as e:
        spec_from_config(c)
    message = str(e.value)
    assert message.startswith(f"{key}="), message
    assert must in message, message


def test_message_house_style():
    with pytest.raises(ValueError, match=re.escape("train.batch_size=0 is out of range: it must be an integer >= 1.")):
        spec_from_config(_config(train__batch_size=0))


def test_every_numeric_key_is_covered():
    """A numeric key added to base_config() needs a row in RANGES (bits: QuantConfig checks them)."""

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]

    def numeric(v):
        return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
            isinstance(v, tuple) and all(numeric(x) for x in v)
        )

    c = common.base_config().to_dict()
    c.pop("sweeps")
    wanted = {k for k, v in leaves(c) if numeric(v)} - {"quant.weight_bits", "quant.embed_bits", "quant.act_bits"}
    assert wanted <= {row[0] for row in RANGES}, wanted - {row[0] for row in RANGES}


@pytest.mark.parametrize("name", CONFIG_MODULES)
def test_shipped_configs_and_their_sweeps_pass(name):
    from train.sweeps.plan import plan_sweep, select_points

    c = importlib.import_module(f"configs.{name}").get_config()
    spec_from_config(c)
    for sweep in c.get("sweeps") or {}:  # every point and teacher job, through spec_from_config
        plan_sweep(f"configs/{name}.py", "/nonexistent/sweep", select_points(f"configs/{name}.py", sweep=sweep))


@pytest.mark.parametrize("key", [row[0] for row in RANGES if row[1][1] == "an integer" and row[3] is None])
def test_bool_for_an_int_key_is_rejected(key):
    c = demo.get_config()
    _set(c, key, True)  # ml_collections accepts a bool for an int field; Python calls True an int
    with pytest.raises(ValueError, match=re.escape(f"{key}=True is not an integer")):
        spec_from_config(c)


def test_bool_in_mesh_is_rejected():
    with pytest.raises(ValueError, match=re.escape("mesh=(True, 1, 1) is out of range")):
        spec_from_config(_config(mesh=(True, 1, 1)))


def test_min_length_must_be_below_max_length():
    for min_length in (41, 40):  # generation needs min_length < max_length (dq_jax/inference/generate.py)
        with pytest.raises(
            ValueError,
            match=re.escape(f"eval.min_length={min_length} is out of range: it must be less than eval.max_length=40"),
        ):
            spec_from_config(_config(eval__max_length=40, eval__min_length=min_length))
    spec_from_config(_config(eval__max_length=40, eval__min_length=39))


@pytest.mark.parametrize("section", ["train", "teacher"])
def test_a_training_stage_needs_steps_or_epochs(section):
    with pytest.raises(ValueError, match=rf"{section}\.steps=0 and {section}\.epochs=0 train nothing"):
        spec_from_config(_config(**{f"{section}__steps": 0, f"{section}__epochs": 0}))
    spec_from_config(_config(**{f"{section}__steps": 0, f"{section}__epochs": 1}))
    spec_from_config(_config(**{f"{section}__steps": 5, f"{section}__epochs": 0}))


def test_lengths_of_a_stage_that_does_not_train_are_not_checked():
    c = xsum.get_config()
    c.teacher.update(finetune=False, steps=0, epochs=0)  # an HF teacher used as is
    spec_from_config(c)
    c = demo.get_config()
    c.stages = "teacher"
    c.train.update(steps=0, epochs=0)  # no distill stage
    spec_from_config(c)


def test_valid_edge_values_pass():
    spec_from_config(
        _config(
            seed=0,
            mesh=(-1, 1, 1),
            train__warmup_ratio=0.0,
            train__grad_clip=0.0,
            distill__weights=(0.0, 0.0),
            data__max_source_length=3,
            data__max_target_length=3,
            eval__max_length=2,
            eval__min_length=0,
            eval__length_penalty=-1.0,
            data__num_proc=0,
            distributed__process_id=-1,
        )
    )
    assert math.isclose(spec_from_config(_config(train__learning_rate=1)).train.learning_rate, 1)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("--config.train.batch_size=0", "train.batch_size=0 is out of range"),
        ("--config.train.batch_size=2.5", "train.batch_size"),  # ml_collections refuses a float for an int key
    ],
)
def test_cli_reports_the_key_and_writes_no_checkpoint(tmp_path, override, needle):
    work = tmp_path / "w"
    out = subprocess.run(
        [sys.executable, "-m", "train.main", "--config", "configs/demo.py", "--workdir", str(work), override],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert needle in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (work / "checkpoints").exists()
