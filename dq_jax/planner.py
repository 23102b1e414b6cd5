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
import inspect
import os
import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dq_jax import data as data_lib
from dq_jax import demo_task, distill, hf, model_sizes, pipeline, precision, sharding, train_step, trainer
from dq_jax.model_config import ModelConfig
from dq_jax.modeling import Seq2SeqLM
from dq_jax.quant_config import QuantConfig
from dq_jax.spec import RunSpec, TrainSettings

GIB = 1024 ** 3
# Hub checkpoints whose shapes the planner knows offline (mbart-large-cc25 has mbart-large-en-ro's).
@dataclasses.dataclass(frozen=True)
class TeacherShape:
    cfg: ModelConfig
    source: str  # where the shapes came from, for people


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


def teacher_shape(spec: RunSpec) -> TeacherShape:
    """The teacher's shapes from its config.json only (no weights): a local directory, a hub id
    (offline, a known checkpoint's standard shapes), or a scratch size with the tokenizer's vocab."""
    path = spec.teacher.path
    if path:
        try:
            return TeacherShape(hf.load_model_config(hf.resolve(path, weights=False)), f"{path} (config.json)")
        except FileNotFoundError:
            if os.path.isdir(path) or path not in model_sizes.HUB:
                raise
            return TeacherShape(model_sizes.model_config(model_sizes.HUB[path]),
                                f"{path} (hub unreachable: the standard '{model_sizes.HUB[path]}' shapes)")
    cfg = model_sizes.model_config(spec.teacher.scratch)
    vocab, where = _scratch_vocab(spec, cfg.vocab_size)
    return TeacherShape(cfg.replace(vocab_size=vocab), f"scratch '{spec.teacher.scratch}', vocab {vocab} ({where})")


def _scratch_vocab(spec: RunSpec, default: int) -> tuple[int, str]:
    """A scratch teacher's vocabulary is its tokenizer's (pipeline._scratch_config)."""
    source = spec.teacher.tokenizer_source
    if source == "train":  # the pipeline trains the demo tokenizer at train_tokenizer's default size
        return inspect.signature(demo_task.train_tokenizer).parameters["vocab_size"].default, "the demo tokenizer"
    try:
        return len(hf.load_tokenizer(source, "mbart" if spec.data.src_lang else "bart")), f"tokenizer {source}"
    except (OSError, ValueError):  # a hub tokenizer offline
        return default, f"tokenizer {source} unreachable: the size's default"


def stages_to_plan(spec: RunSpec) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The training stages this run would run (as the pipeline decides), and why the others not."""
    planned, skipped = [], []
    if "teacher" not in spec.stages:
        skipped.append(("teacher", "not in stages"))
    elif spec.teacher.path and not spec.teacher.finetune:
        skipped.append(("teacher", "teacher.finetune=False: the teacher is used as it is"))
    else:
        planned.append("teacher")
    if "distill" in spec.stages:
        planned.append("distill")
    else:
        skipped.append(("distill", "not in stages"))
    return tuple(planned), tuple(skipped)


def _model(spec: RunSpec, cfg: ModelConfig, quant: QuantConfig | None = None, remat: str = "none") -> Seq2SeqLM:
    """A model as the pipeline builds it (`_Job.model`); `remat` for the model a stage trains."""
    return Seq2SeqLM(cfg, quant, dtype=precision.compute_dtype(spec.precision), remat=remat)


def _abstract(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def plan_stage(name: str, spec: RunSpec, ts: TrainSettings, mesh: Mesh, model: Seq2SeqLM, params,
               teacher: Seq2SeqLM | None, teacher_params, loss: distill.DistillConfig) -> StagePlan:
    """Compiles one stage's step for `mesh` from abstract `params` (the trainable tree) and
    `teacher_params` (None without a teacher) at the largest bucketed batch."""
    sharding.check_batch(ts.batch_size, mesh)
    d = spec.data
    src = data_lib.bucket(d.max_source_length, d.min_bucket, d.max_source_length)
    tgt = data_lib.bucket(d.max_target_length, d.min_bucket, d.max_target_length)
    tx = train_step.make_optimizer(trainer.optim_config(ts, ts.steps or 1000), params)  # the schedule's numbers don't matter
    rng = jax.eval_shape(lambda: jax.random.PRNGKey(spec.seed))
    state = jax.eval_shape(lambda p, r: train_step.TrainState(jnp.int32(0), p, tx.init(p), r, jnp.int32(-1)),
                           params, rng)  # as train_step.init_state builds it
    st_sh = sharding.state_shardings(state, params, mesh)
    t_sh = None if teacher_params is None else sharding.param_shardings(teacher_params, mesh)
    step = train_step.make_train_step(model, teacher, loss, tx)
    b_sh = train_step.batch_shardings(mesh)
    batch = {k: jax.ShapeDtypeStruct((ts.grad_accum, ts.batch_size, src if k in ("input_ids", "attention_mask")
                                      else tgt), jnp.int32, sharding=b_sh[k]) for k in train_step.BATCH_KEYS}
    start = time.perf_counter()
    compiled = train_step.compile_step(step, mesh, st_sh, t_sh).lower(
        _abstract(state, st_sh), None if t_sh is None else _abstract(teacher_params, t_sh), batch).compile()
    seconds = time.perf_counter() - start
    mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # XLA's cost analysis counts a loop body once: the scan over A micro-batches runs it A times.
    # The AdamW update outside the loop is then counted A times too: a few FLOPs per parameter.
    flops = float(cost.get("flops", 0.0)) * ts.grad_accum
    return StagePlan(name, tuple(mesh.shape.values()), ts.grad_accum, ts.batch_size, src, tgt, model.remat, seconds,
                     flops, mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                     mem.temp_size_in_bytes, mem.generated_code_size_in_bytes)


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
    t_cfg = teacher.cfg
    enc_map, dec_map = pipeline.student_maps(spec, t_cfg)  # a student deeper than its teacher fails here
    s_cfg = t_cfg.replace(encoder_layers=spec.student.layers[0], decoder_layers=spec.student.layers[1])
    mesh = sharding.make_mesh(pipeline.resolve_mesh(spec.mesh))
    names, skipped = stages_to_plan(spec)
    t_params = hf.abstract_params(t_cfg)
    stages = []
    if "teacher" in names:  # the teacher trained alone on the task loss (pipeline._teacher)
        ts = spec.teacher.train
        stages.append(plan_stage("teacher", spec, ts, mesh, _model(spec, t_cfg, None, ts.remat), t_params, None, None,
                                 distill.DistillConfig(logit_weight=0, inter_weight=0)))
    if "distill" in names:  # pipeline._student
        w_logit, w_inter = spec.distill.weights if spec.distill.enabled else (0.0, 0.0)
        loss = distill.DistillConfig(spec.distill.mode, w_logit, w_inter, enc_map, dec_map)
        teacher_model = _model(spec, t_cfg) if loss.uses_teacher else None
        stages.append(plan_stage("distill", spec, spec.train, mesh, _model(spec, s_cfg, spec.quant, spec.train.remat),
                                 hf.abstract_trainable(s_cfg, spec.quant), teacher_model,
                                 t_params if loss.uses_teacher else None, loss))
    device = mesh.devices.flat[0]
    limit = int(device_memory_gib * GIB) if device_memory_gib else device_memory_bytes(device)
    return Plan(teacher, s_cfg, tuple(stages), skipped, tuple(mesh.shape.values()), device.device_kind,
                mesh.devices.size, limit)


def size_text(b: float) -> str:
    """Bytes for people: GiB, or MiB below a tenth of one."""
    return f"{b / GIB:.2f} GiB" if b >= GIB / 10 else f"{b / 2 ** 20:.1f} MiB"


def advice(p: Plan, s: StagePlan) -> list[str]:
    """What would make stage `s` fit, with its numbers (estimates: plan again to check one)."""
    gib, (data, fsdp, tensor) = size_text, s.mesh
    fixed = s.argument_bytes - s.batch_bytes  # the train state (params and the two Adam moments) and teacher
    teacher = fixed - s.alias_bytes
    rows = f"{s.rows_per_device} row{'s' if s.rows_per_device != 1 else ''}"
    held = "train state and teacher" if teacher > 0.01 * fixed else "train state"
    out = [f"{s.stage}: needs {gib(s.total_bytes)} per device, {gib(s.total_bytes - p.device_memory_bytes)} more "
           f"than the {gib(p.device_memory_bytes)} a device has: {gib(s.alias_bytes)} train state"
           + (f", {gib(teacher)} teacher params" if teacher > 0.01 * fixed else "")
           + f", {gib(s.temp_bytes)} temporaries (activations of {rows} x ({s.source_length}+{s.target_length}) "
           "tokens per micro-batch, gradients, optimizer updates)."]
    if data > 1:
        out.append(f"- FSDP: --config.mesh='(1,{data * fsdp},{tensor})' splits the {held} over "
                   f"{data * fsdp} devices instead of {fsdp}: about {gib(fixed / data)} instead of {gib(fixed)} per "
                   "device, with the same rows per device (the weights it gathers add temporaries: plan it).")
    else:
        out.append(f"- FSDP over more devices: each doubling of the fsdp axis (now {fsdp}) halves the {gib(fixed)} "
                   f"of {held} per device.")
    if fsdp > 1 and s.temp_bytes > fixed:
        out.append(f"- Data parallel: --config.mesh='({data * fsdp},1,{tensor})' keeps a whole {held} "
                   f"on each device (about {gib(fixed * fsdp)}) but gathers no activations over fsdp, which can "
                   f"make the {gib(s.temp_bytes)} temporaries much smaller: plan it.")
    out.append("- Rematerialization: --config.train.remat=full (or dots) recomputes each layer's activations in "
               f"the backward instead of keeping them, most of the {gib(s.temp_bytes)} temporaries"
               + (" (this plan already uses it)." if s.remat != "none" else "; plan again with it to see the effect."))
    half = s.batch_size // 2
    if half and half % (data * fsdp) == 0:
        out.append(f"- Gradient accumulation: --config.train.batch_size={half} --config.train.grad_accum="
                   f"{2 * s.accum} keeps the effective batch {s.batch_size * s.accum} and halves the rows per device "
                   f"({s.rows_per_device} -> {s.rows_per_device // 2}) and the activations with them; or a smaller "
                   f"batch alone: --config.train.batch_size={half}.")
    else:
        out.append(f"- The micro-batch is already {rows} per device: a smaller one needs fewer "
                   "data-parallel devices (data x fsdp), or shorter data.max_source_length / max_target_length.")
    return out
