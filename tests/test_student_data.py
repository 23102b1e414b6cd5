"""The students' share of the training data (`student.train_fraction`, `student.seed`): a subset
fixed by the seed, trained on alone, recorded in results.json, checked before any work."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from configs import demo
from dq_jax import pipeline, stages
from dq_jax.data import batches as data
from dq_jax.data.columns import TextColumn, TokenColumn, Tokenized
from dq_jax.data.config import DataConfig
from train.settings import spec_from_config
from train.sweeps import plan
from train.sweeps.grid import Point


def _split(n: int) -> Tokenized:
    """Row i's source is [0, i + 10, 2] (so a batch names its rows), its target [0, 7, 2]."""
    refs = TextColumn(
        pa.chunked_array(
            [pa.array([f"ref {i}" for i in range(n // 2)]), pa.array([f"ref {i}" for i in range(n // 2, n)])]
        )
    )
    return Tokenized(
        TokenColumn.from_lists([[0, i + 10, 2] for i in range(n)]), TokenColumn.from_lists([[0, 7, 2]] * n), refs
    )


def _rows(spec):
    return stages.TrainRows(spec.student.train_fraction, spec.student.seed)


def _spec(**student):
    c = demo.get_config()
    for k, v in student.items():
        c.student[k] = v
    return spec_from_config(c)


def test_the_subset_is_fixed_by_the_seed_and_has_the_fraction_of_rows():
    a = data.fraction_rows(20000, 0.1, seed=0)
    assert len(a) == 2000 and len(np.unique(a)) == 2000 and (np.diff(a) > 0).all()
    assert a.min() >= 0 and a.max() < 20000
    np.testing.assert_array_equal(a, data.fraction_rows(20000, 0.1, seed=0))
    b = data.fraction_rows(20000, 0.1, seed=1)
    assert 100 < len(np.intersect1d(a, b)) < 300  # independent draws share ~10% of their rows
    np.testing.assert_array_equal(data.fraction_rows(7, 1.0, seed=3), np.arange(7))
    assert len(data.fraction_rows(7, 0.01, seed=0)) == 1  # at least one row
    assert len(data.fraction_rows(10, 0.25, seed=0)) == 2  # round(2.5) -> 2, numpy's round half to even


def test_take_is_a_view_of_the_chosen_rows():
    t = _split(10)
    sub = t.take(np.array([8, 1, 5]))
    assert len(sub) == 3
    assert [int(sub.source[i][1]) for i in range(3)] == [18, 11, 15]
    np.testing.assert_array_equal(sub.source.lengths(), [3, 3, 3])
    assert list(sub.references[:3]) == ["ref 8", "ref 1", "ref 5"]
    assert [int(sub.take(np.array([2, 0])).source[i][1]) for i in range(2)] == [15, 18]  # a view of a view
    assert int(sub.head(2).source[1][1]) == 11 and len(sub.head(2)) == 2
    with pytest.raises(IndexError):
        sub.source[3]
    with pytest.raises(IndexError, match=r"rows outside \[0, 3\)"):
        sub.take(np.array([3]))


def test_training_batches_read_only_the_subset():
    spec = _spec(train_fraction=0.25, seed=4)
    full = _split(64)
    split, record = pipeline.student_train_split(spec, _rows(spec), full)
    rows = data.fraction_rows(64, 0.25, 4)
    assert record == {
        "fraction": 0.25,
        "seed": 4,
        "examples": 16,
        "of": 64,
        "rows_sha256": hashlib.sha256(rows.astype("<i8").tobytes()).hexdigest(),
    }
    it = data.TrainIterator(
        split, DataConfig(min_bucket=4), batch_size=4, accum=1, seed=4, pad=1, start=2, model_type="bart"
    )
    assert it.steps_per_epoch == 4
    seen = [int(v) - 10 for _ in range(it.steps_per_epoch) for v in next(it)["input_ids"][0, :, 1]]
    assert sorted(seen) == sorted(rows.tolist())  # one epoch: every subset row once, nothing else


def test_the_whole_split_by_default_and_the_seed_follows_the_run_seed():
    spec = _spec()
    assert (spec.student.train_fraction, spec.student.seed) == (1.0, 0)
    full = _split(32)
    split, record = pipeline.student_train_split(spec, _rows(spec), full)
    assert split is full and record["examples"] == record["of"] == 32
    c = demo.get_config()
    c.seed = 7
    assert spec_from_config(c).student.seed == 7


@pytest.mark.parametrize("value", [0.0, -0.5, 1.01])
def test_a_fraction_outside_zero_one_is_refused_naming_the_key(value):
    with pytest.raises(
        ValueError,
        match=rf"^student.train_fraction={value!r} is out of range: it must be a finite "
        r"number in \(0, 1\]\.$",
    ):
        _spec(train_fraction=value)


def test_a_fraction_smaller_than_one_batch_fails_before_training():
    spec = _spec(train_fraction=0.1)  # demo: batch 16
    with pytest.raises(
        ValueError,
        match=r"^student.train_fraction=0.1 keeps 10 of the 100 training examples, fewer "
        r"than one batch of 16 \(train.batch_size x train.grad_accum\)",
    ):
        pipeline.student_train_split(spec, _rows(spec), _split(100))


def test_students_with_other_fractions_and_seeds_share_one_teacher(tmp_path):
    planned = plan.plan_sweep(
        "configs/demo.py",
        str(tmp_path / "s"),
        [Point("a", {}), Point("b", {"student.train_fraction": "0.1", "student.seed": "2"})],
    )
    assert [t.name for t in planned.teachers] == ["teacher"]
    assert planned.teacher_of == {"a": "teacher", "b": "teacher"}
