"""Throughput and MFU: FLOPs from the lowered step's cost analysis, peaks, the arithmetic."""

import json
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from dq_jax.training import throughput
from dq_jax.training.throughput import Peak, StepFlops, StepTimer, Throughput, device_peak, known_peak, lowered_flops


def test_flops_of_a_jitted_matmul_are_2mnk():
    m, k, n = 64, 48, 40
    f = jax.jit(lambda a, b: a @ b)
    assert lowered_flops(f.lower(jnp.ones((m, k)), jnp.ones((k, n)))) == 2 * m * n * k


def test_step_flops_count_every_micro_batch_once_per_shape():
    """The step scans over A micro-batches; XLA counts a loop body once, StepFlops does not."""
    k, n = 32, 16

    def step(state, teacher, batch):
        def micro(acc, x):  # x: [B, K]
            return acc + jnp.sum(x @ state["w"]), None

        return jax.lax.scan(micro, 0.0, batch["x"])[0]

    jitted = jax.jit(step)
    lowered = []
    counter = StepFlops(SimpleNamespace(lower=lambda *a: lowered.append(a) or jitted.lower(*a)))
    state = {"w": jnp.ones((k, n))}
    for a, b in ((1, 8), (4, 8), (4, 8), (2, 16)):
        flops = counter(state, None, {"x": jnp.ones((a, b, k))})
        assert flops == pytest.approx(2 * a * b * k * n, rel=0.05)  # + the sums, a few percent here
    assert len(lowered) == 3  # the repeated shape was not lowered again


def test_throughput_arithmetic():
    t = Throughput.of(seconds=2.0, steps=4, tokens=1000, flops=8e12, devices=2, peak=Peak(4.0, "test"))
    assert t.step_time_s == 0.5 and t.tokens_per_s == 500
    assert t.tflops_per_device == pytest.approx(2.0)  # 8e12 in 2 s over 2 devices
    assert t.mfu == pytest.approx(0.5)
    assert Throughput.of(1.0, 1, 1, 1e12, 1, Peak(0.0, "unknown")).mfu == 0.0
    assert set(t.scalars()) == {"step_time_s", "tokens_per_s", "tflops_per_device", "mfu"}


def test_the_timer_keeps_each_batch_shape_of_its_window():
    timer = StepTimer()
    for a, b in ((1, 8), (1, 16), (1, 8)):
        timer.add(10.0, {"x": jnp.ones((a, b, 4))})
    assert timer.steps == 3 and timer.tokens == 30.0
    assert sorted((n, b["x"].shape) for n, b in timer.batches()) == [(1, (1, 16, 4)), (2, (1, 8, 4))]
    timer.exclude(-5.0)
    assert timer.seconds() >= 5.0
    timer.restart()
    assert timer.steps == 0 and timer.batches() == [] and timer.seconds() < 5.0


@pytest.mark.parametrize(
    "kind,precision,expected",
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100-SXM4-40GB", "fp32", 156.0),
        ("NVIDIA A100 80GB PCIe", "bf16", 312.0),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 80GB HBM3", "fp32", 494.5),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("TPU v4", "bf16", 275.0),
        ("TPU v5 lite", "bf16", 197.0),
        ("TPU v5e", "fp32", 197.0),
        ("TPU v5", "bf16", 459.0),
        ("TPU v5p", "bf16", 459.0),
        ("TPU v4 lite", "bf16", None),
        ("cpu", "fp32", None),
        ("NVIDIA GeForce RTX 3090", "bf16", None),
    ],
)
def test_known_peaks_by_device_kind(kind, precision, expected):
    found = known_peak(kind, precision)
    assert (found[1] if found else None) == expected


def test_device_peak_prefers_the_config_then_the_table():
    tpu = [SimpleNamespace(device_kind="TPU v5 lite", platform="tpu")]
    assert device_peak("bf16", 100.0, tpu) == Peak(100.0, "train.peak_tflops")
    assert device_peak("bf16", 0.0, tpu).tflops == 197.0
    unknown = device_peak("bf16", 0.0, [SimpleNamespace(device_kind="Mystery X1", platform="gpu")])
    assert unknown.tflops == 0.0 and "train.peak_tflops" in unknown.source


def test_cpu_peak_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DQ_JAX_CACHE", str(tmp_path))
    first = throughput.measured_cpu_peak("fp32", n=128, repeat=2)
    assert first > 0
    cached = json.loads((tmp_path / "cpu_peak.json").read_text())
    assert list(cached.values()) == [first] and next(iter(cached)).endswith("| fp32")

    def must_not_measure(*_):
        raise AssertionError("measured again")

    assert throughput.measured_cpu_peak("fp32", measure=must_not_measure) == first
    # another precision is another measurement, kept beside the first
    assert throughput.measured_cpu_peak("bf16", measure=lambda *_: 123.0) == 123.0
    assert len(json.loads((tmp_path / "cpu_peak.json").read_text())) == 2
    # the CPU devices of a process share its cores
    devices = [SimpleNamespace(device_kind="cpu", platform="cpu")] * 4
    assert device_peak("fp32", 0.0, devices).tflops == pytest.approx(first / 4 / 1e12)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
