"""One process of a multi-process DQ run (and its single-process reference).

    python -m tests.dist_worker OUT_DIR PROCESS_ID NUM_PROCESSES PORT [--die-after N]

Each process has 4 simulated CPU devices; the (2, 2, 2) mesh spans all of them. Three DQ steps
of a tiny 2-2-8 student, each process loading only its rows of every global batch; then an
Orbax checkpoint written by all processes together, and process 0 writes the losses and the
gathered params to OUT_DIR/result.npz.
"""

from __future__ import annotations

import os
import sys

import numpy as np

MESH = (2, 2, 2)
STEPS = 3
BATCH, SRC, TGT = 8, 12, 8


def teacher_config():
    from dq_jax.model.config import ModelConfig

    return ModelConfig(
        vocab_size=128,
        d_model=32,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=32,
    )


def global_batch(step: int) -> dict:
    rng = np.random.RandomState(step)
    ids = rng.randint(3, 128, (1, BATCH, SRC)).astype(np.int32)
    labels = rng.randint(3, 128, (1, BATCH, TGT)).astype(np.int32)
    am, dm = np.ones_like(ids), np.ones_like(labels)
    for b in range(BATCH):
        am[:, b, SRC - b % 4 :] = 0
        dm[:, b, TGT - b % 3 :] = 0
    ids[am == 0] = 1
    dec = np.concatenate([np.full((1, BATCH, 1), 2, np.int32), labels[..., :-1]], -1)
    dec[dm == 0] = 1
    return dict(
        input_ids=ids,
        attention_mask=am,
        decoder_input_ids=dec,
        decoder_attention_mask=dm,
        labels=np.where(dm == 1, labels, -100).astype(np.int32),
    )


def setup(mesh_shape=MESH):
    """(student, teacher, dcfg, tx, mesh, state, state shardings, teacher params on the mesh)."""
    import jax
    import jax.numpy as jnp

    from dq_jax.model.modeling import Seq2SeqLM
    from dq_jax.parallel import sharding
    from dq_jax.quant.config import QuantConfig
    from dq_jax.training import distill, train_step

    cfg = teacher_config()
    ids = jnp.zeros((1, 4), jnp.int32)
    # initialized on the CPU of this process alone: every process computes the same numbers
    t_params = jax.device_get(jax.jit(Seq2SeqLM(cfg).init)(jax.random.key(0), ids, decoder_input_ids=ids)["params"])
    s_cfg, s_params = distill.init_student(cfg, t_params, 2, 1)
    rng = np.random.RandomState(1)
    s_params = jax.tree.map(
        lambda x: np.asarray(x) + 0.01 * rng.standard_normal(np.shape(x)).astype(np.float32), s_params
    )
    dcfg = distill.DistillConfig(encoder_map=distill.layer_map(3, 2), decoder_map=distill.layer_map(3, 1))
    tx = train_step.make_optimizer(
        train_step.OptimConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10, weight_decay=0.01), s_params
    )
    mesh = sharding.make_mesh(mesh_shape)
    state, st_sh = train_step.init_state(s_params, tx, jax.random.key(42), mesh)
    t_sh = sharding.param_shardings(t_params, mesh)
    student, teacher = Seq2SeqLM(s_cfg, QuantConfig(2, 2, 8)), Seq2SeqLM(cfg)
    step = train_step.compile_step(train_step.make_train_step(student, teacher, dcfg, tx), mesh, st_sh, t_sh)
    return step, mesh, state, st_sh, jax.device_put(t_params, t_sh)


def local_rows(batch: dict, mesh) -> dict:
    import jax

    from dq_jax.parallel import sharding

    if jax.process_count() == 1:
        return batch
    rows = sharding.process_rows(mesh, BATCH)
    return {k: v[:, rows] for k, v in batch.items()}


def run(steps=STEPS, start=0, die_after=None, state=None, mesh_shape=MESH):
    import jax

    from dq_jax.training import train_step

    step_fn, mesh, fresh, st_sh, teacher = setup(mesh_shape)
    state = fresh if state is None else state
    losses = []
    for i in range(start, start + steps):
        if die_after is not None and i == die_after:
            os._exit(3)  # a crashed host: no clean shutdown
        batch = train_step.shard_batch(local_rows(global_batch(i), mesh), mesh, BATCH)
        state, metrics = step_fn(state, teacher, batch)
        losses.append(float(jax.device_get(metrics["loss"])))
    return state, losses, mesh, st_sh


def main():
    out, pid, nproc, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    die_after = int(sys.argv[sys.argv.index("--die-after") + 1]) if "--die-after" in sys.argv else None
    import jax

    jax.config.update("jax_num_cpu_devices", 4)
    from dq_jax.parallel import distributed

    distributed.initialize(
        distributed.DistributedConfig(
            coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid, heartbeat_timeout=5
        )
    )
    from dq_jax.model.hf_layout import flatten
    from dq_jax.training.checkpoint import StageCheckpoints

    state, losses, _, _ = run(die_after=None if pid != 1 else die_after)
    ckpts = StageCheckpoints(os.path.join(out, "checkpoints"))
    ckpts.save(STEPS, state, {"data": {"epoch": 0, "position": STEPS}, "best": None}, force=True)
    ckpts.wait()
    params = distributed.to_host(state.params)
    if distributed.is_main():
        np.savez(
            os.path.join(out, "result.npz"), losses=np.array(losses), **{"/".join(k): v for k, v in flatten(params)}
        )
    ckpts.close()
    distributed.sync("done")


if __name__ == "__main__":
    main()
