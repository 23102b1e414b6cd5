"""Orbax checkpoints of a training stage: the latest train states and the best params.

`DIR/checkpoints/<stage>/latest/<step>`: full TrainState + data iterator position (two kept,
saved asynchronously), restored onto whatever mesh the current run has.
`DIR/checkpoints/<stage>/best/<step>`: student params of the best dev score + that score.
Orbax writes each step to a temporary directory and renames it when complete, so a run
killed mid-save leaves no step that looks finished.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class StageCheckpoints:
    def __init__(self, directory: str, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, enable_async_checkpointing=async_save,
                                                      create=True)
        self.latest = ocp.CheckpointManager(os.path.join(self.directory, "latest"), options=opts(keep))
        self.best = ocp.CheckpointManager(os.path.join(self.directory, "best"), options=opts(1))

    def save(self, step: int, state, extra: dict, force: bool = False) -> None:
        self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       extra=ocp.args.JsonSave(extra)), force=force)

    def save_best(self, step: int, params, score: dict) -> None:
        self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                     score=ocp.args.JsonSave(score)), force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state, shardings, step: int | None = None):
        """(state, extra) of `step` (default: latest), on the given shardings."""
        step = self.latest.latest_step() if step is None else step
        out = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(abstract_state, shardings)), extra=ocp.args.JsonRestore()))
        return out["state"], out["extra"]

    def best_score(self) -> dict | None:
        step = self.best.latest_step()
        if step is None:
            return None
        return self.best.restore(step, args=ocp.args.Composite(score=ocp.args.JsonRestore()))["score"]

    def restore_best(self, abstract_params, shardings):
        step = self.best.latest_step()
        if step is None:
            return None
        out = self.best.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(abstract_params, shardings)), score=ocp.args.JsonRestore()))
        return out["params"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
