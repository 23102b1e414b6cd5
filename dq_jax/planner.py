"""Sizes a job before it runs: each training stage's step compiled ahead of time for the run's
mesh and largest batch, from shapes alone (nothing is allocated), with XLA's per-device memory
and FLOPs (`train.plan`).

The step compiled is the trainer's own (`train_step.make_train_step` + `compile_step`, the same
models, loss config, optimizer and shardings), lowered with `jax.ShapeDtypeStruct` arguments:
the abstract train state (`jax.eval_shape`), the teacher's abstract params and a batch
`[A, B, L]` at the largest bucketed lengths, `(max_source_length, max_target_length)`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dq_jax.data import batches as data_lib
from dq_jax.model.config import ModelConfig
from dq_jax.model.modeling import abstract_params, abstract_trainable
from dq_jax.parallel import sharding
from dq_jax.spec import RunSpec
from dq_jax.stages import RunStage, TeacherShape, derive, teacher_shape
from dq_jax.training import train_step

GIB = 1024**3


# Hub checkpoints whose shapes the planner knows offline (mbart-large-cc25 has mbart-large-en-ro's).
@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage's compiled step. Bytes are per device, as XLA's memory analysis gives them."""

    stage: str  # teacher | distill
    mesh: tuple[int, int, int]  # (data, fsdp, tensor)
    accum: int  # A: micro-batches per step
    batch_size: int  # B: global rows per micro-batch
    source_length: int
    target_length: int
    remat: str
    compile_seconds: float  # lowering and compiling
    flops: float  # per device per step, all A micro-batches
    argument_bytes: int  # train state + teacher params + batch
    output_bytes: int  # new train state + metrics
    alias_bytes: int  # outputs written over donated arguments (the train state)
    temp_bytes: int  # activations, gradients, optimizer temporaries
    code_bytes: int  # generated code

    @property
    def total_bytes(self) -> int:
        """Peak need of one device: aliased outputs reuse their arguments' buffers."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def rows_per_device(self) -> int:
        """Rows of a micro-batch one device computes (batches split over data x fsdp)."""
        return self.batch_size // (self.mesh[0] * self.mesh[1])

    @property
    def batch_bytes(self) -> int:
        """The step's int32 batch on one device: 5 arrays `[A, rows, L]`."""
        return 4 * self.accum * self.rows_per_device * (2 * self.source_length + 3 * self.target_length)


@dataclasses.dataclass(frozen=True)
class Plan:
    teacher: TeacherShape
    student: ModelConfig
    stages: tuple[StagePlan, ...]
    skipped: tuple[tuple[str, str], ...]  # (stage, why it is not planned)
    mesh: tuple[int, int, int]  # resolved (data, fsdp, tensor)
    device_kind: str
    device_count: int
    device_memory_bytes: int | None  # None: unknown (CPU without --device_memory_gib)

    def fits(self, stage: StagePlan) -> bool | None:
        return None if self.device_memory_bytes is None else stage.total_bytes <= self.device_memory_bytes

    @property
    def too_big(self) -> tuple[StagePlan, ...]:
        return tuple(s for s in self.stages if self.fits(s) is False)


def _abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def plan_stage(spec: RunSpec, rs: RunStage, mesh: Mesh) -> StagePlan:
    """Compiles stage `rs`'s step for `mesh` from shapes alone (its trainable tree, the teacher's
    params) at the largest bucketed batch."""
    ts, model, teacher = rs.train, rs.trained_model(), rs.teacher_model()
    params = abstract_trainable(rs.model, rs.quant)
    teacher_params = None if rs.teacher is None else abstract_params(rs.teacher)
    sharding.check_batch(ts.batch_size, mesh)
    d = spec.data
    src = data_lib.bucket(d.max_source_length, d.min_bucket, d.max_source_length)
    tgt = data_lib.bucket(d.max_target_length, d.min_bucket, d.max_target_length)
    # the schedule's numbers do not change the step's memory or FLOPs
    tx = train_step.make_optimizer(train_step.OptimConfig.of(ts, ts.steps or 1000), params)
    rng = jax.eval_shape(lambda: jax.random.PRNGKey(spec.seed))
    state = jax.eval_shape(
        lambda p, r: train_step.TrainState(jnp.int32(0), p, tx.init(p), r, jnp.int32(-1)), params, rng
    )  # as train_step.init_state builds it
    st_sh = sharding.state_shardings(state, params, mesh)
    t_sh = None if teacher_params is None else sharding.param_shardings(teacher_params, mesh)
    step = train_step.make_train_step(model, teacher, rs.loss, tx)
    b_sh = train_step.batch_shardings(mesh)
    batch = {
        k: jax.ShapeDtypeStruct(
            (ts.grad_accum, ts.batch_size, src if k in ("input_ids", "attention_mask") else tgt),
            jnp.int32,
            sharding=b_sh[k],
        )
        for k in train_step.BATCH_KEYS
    }
    start = time.perf_counter()
    compiled = (
        train_step.compile_step(step, mesh, st_sh, t_sh)
        .lower(_abstract(state, st_sh), None if t_sh is None else _abstract(teacher_params, t_sh), batch)
        .compile()
    )
    seconds = time.perf_counter() - start
    mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # XLA's cost analysis counts a loop body once: the scan over A micro-batches runs it A times.
    # The AdamW update outside the loop is then counted A times too: a few FLOPs per parameter.
    flops = float(cost.get("flops", 0.0)) * ts.grad_accum
    return StagePlan(
        rs.name,
        tuple(mesh.shape.values()),
        ts.grad_accum,
        ts.batch_size,
        src,
        tgt,
        model.remat,
        seconds,
        flops,
        mem.argument_size_in_bytes,
        mem.output_size_in_bytes,
        mem.alias_size_in_bytes,
        mem.temp_size_in_bytes,
        mem.generated_code_size_in_bytes,
    )


def device_memory_bytes(device: jax.Device) -> int | None:
    """What the backend lets one device allocate (GPU/TPU); None where it does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory stats raise instead of returning None
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def plan(spec: RunSpec, device_memory_gib: float | None = None) -> Plan:
    """Plans every training stage `spec` would run, on its mesh over this process's devices.
    `device_memory_gib` overrides what the backend reports."""
    teacher = teacher_shape(spec)
    stages = derive(spec, teacher.cfg)  # a student the teacher cannot give fails here
    mesh = sharding.make_mesh(sharding.resolve_mesh(spec.mesh))
    planned = tuple(plan_stage(spec, rs, mesh) for rs in stages.stages)
    device = mesh.devices.flat[0]
    limit = int(device_memory_gib * GIB) if device_memory_gib else device_memory_bytes(device)
    return Plan(
        teacher,
        stages.student,
        planned,
        stages.skipped,
        tuple(mesh.shape.values()),
        device.device_kind,
        mesh.devices.size,
        limit,
    )


def size_text(b: float) -> str:
    """Bytes for people: GiB, or MiB below a tenth of one."""
    return f"{b / GIB:.2f} GiB" if b >= GIB / 10 else f"{b / 2**20:.1f} MiB"


def advice(p: Plan, s: StagePlan) -> list[str]:
    """What would make stage `s` fit, with its numbers (estimates: plan again to check one)."""
    gib, (data, fsdp, tensor) = size_text, s.mesh
    fixed = s.argument_bytes - s.batch_bytes  # the train state (params and the two Adam moments) and teacher
    teacher = fixed - s.alias_bytes
    rows = f"{s.rows_per_device} row{'s' if s.rows_per_device != 1 else ''}"
    held = "train state and teacher" if teacher > 0.01 * fixed else "train state"
    out = [
        f"{s.stage}: needs {gib(s.total_bytes)} per device, {gib(s.total_bytes - p.device_memory_bytes)} more "
        f"than the {gib(p.device_memory_bytes)} a device has: {gib(s.alias_bytes)} train state"
        + (f", {gib(teacher)} teacher params" if teacher > 0.01 * fixed else "")
        + f", {gib(s.temp_bytes)} temporaries (activations of {rows} x ({s.source_length}+{s.target_length}) "
        "tokens per micro-batch, gradients, optimizer updates)."
    ]
    if data > 1:
        out.append(
            f"- FSDP: --config.mesh='(1,{data * fsdp},{tensor})' splits the {held} over "
            f"{data * fsdp} devices instead of {fsdp}: about {gib(fixed / data)} instead of {gib(fixed)} per "
            "device, with the same rows per device (the weights it gathers add temporaries: plan it)."
        )
    else:
        out.append(
            f"- FSDP over more devices: each doubling of the fsdp axis (now {fsdp}) halves the {gib(fixed)} "
            f"of {held} per device."
        )
    if fsdp > 1 and s.temp_bytes > fixed:
        out.append(
            f"- Data parallel: --config.mesh='({data * fsdp},1,{tensor})' keeps a whole {held} "
            f"on each device (about {gib(fixed * fsdp)}) but gathers no activations over fsdp, which can "
            f"make the {gib(s.temp_bytes)} temporaries much smaller: plan it."
        )
    out.append(
        "- Rematerialization: --config.train.remat=full (or dots) recomputes each layer's activations in "
        f"the backward instead of keeping them, most of the {gib(s.temp_bytes)} temporaries"
        + (" (this plan already uses it)." if s.remat != "none" else "; plan again with it to see the effect.")
    )
    half = s.batch_size // 2
    if half and half % (data * fsdp) == 0:
        out.append(
            f"- Gradient accumulation: --config.train.batch_size={half} --config.train.grad_accum="
            f"{2 * s.accum} keeps the effective batch {s.batch_size * s.accum} and halves the rows per device "
            f"({s.rows_per_device} -> {s.rows_per_device // 2}) and the activations with them; or a smaller "
            f"batch alone: --config.train.batch_size={half}."
        )
    else:
        out.append(
            f"- The micro-batch is already {rows} per device: a smaller one needs fewer "
            "data-parallel devices (data x fsdp), or shorter data.max_source_length / max_target_length."
        )
    return out
