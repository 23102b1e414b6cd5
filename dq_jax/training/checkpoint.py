"""Orbax checkpoints of a training stage: the latest train states and the best params.

`DIR/checkpoints/<stage>/latest/<step>`: full TrainState + data iterator position (two kept,
saved asynchronously), restored onto whatever mesh the current run has.
`DIR/checkpoints/<stage>/best/<step>`: student params of the best dev score + that score.
Orbax writes each step to a temporary directory and renames it when complete, so a run
killed mid-save leaves no step that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


class DiskFullError(CheckpointError):
    pass


def _no_space(e: BaseException) -> bool:
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e)


@contextlib.contextmanager
def _disk_full_is_clear(what: str, directory: str, latest: int | None):
    """Orbax and tensorstore report a full disk as many error types; name it once."""
    try:
        yield
    except Exception as e:
        if _no_space(e):
            raise DiskFullError(
                f"Disk full while {what} in {directory}: no space left on device. Earlier checkpoints are "
                f"intact (latest complete step: {latest}); free space and rerun the same command to resume."
            ) from e
        raise


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class StageCheckpoints:
    def __init__(self, directory: str, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        opts = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, enable_async_checkpointing=async_save, create=True)
        self.latest = ocp.CheckpointManager(os.path.join(self.directory, "latest"), options=opts(keep))
        self.best = ocp.CheckpointManager(os.path.join(self.directory, "best"), options=opts(1))

    def save(self, step: int, state, extra: dict, force: bool = False) -> None:
        with _disk_full_is_clear(f"saving step {step}", self.directory, self.latest.latest_step()):
            self.latest.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)),
                force=force,
            )

    def save_best(self, step: int, params, score: dict) -> None:
        with _disk_full_is_clear(f"saving the best params (step {step})", self.directory, self.latest.latest_step()):
            self.best.save(
                step,
                args=ocp.args.Composite(params=ocp.args.StandardSave(params), score=ocp.args.JsonSave(score)),
                force=True,
            )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state, shardings):
        """(state, extra) of the newest readable step, on the given shardings.

        A step damaged after it was written (a truncated or deleted file) is skipped with a
        warning and the one before it is used; if none can be read, one clear error."""
        steps = sorted(self.latest.all_steps(), reverse=True)
        errors = []
        for step in steps:
            try:
                out = self.latest.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_abstract(abstract_state, shardings)),
                        extra=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                errors.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
                log.warning(
                    "Checkpoint step %d in %s is unreadable (%s); trying the one before it.",
                    step,
                    self.latest.directory,
                    type(e).__name__,
                )
                continue
            return out["state"], out["extra"]
        raise CheckpointError(
            f"No readable checkpoint in {self.latest.directory} ({'; '.join(errors)}). "
            "Move that directory away to start this stage afresh."
        )

    def best_score(self) -> dict | None:
        step = self.best.latest_step()
        if step is None:
            return None
        return self.best.restore(step, args=ocp.args.Composite(score=ocp.args.JsonRestore()))["score"]

    def restore_best(self, abstract_params, shardings):
        step = self.best.latest_step()
        if step is None:
            return None
        out = self.best.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(abstract_params, shardings)), score=ocp.args.JsonRestore()
            ),
        )
        return out["params"]

    def wait(self) -> None:
        with _disk_full_is_clear("finishing a checkpoint", self.directory, self.latest.latest_step()):
            self.latest.wait_until_finished()
            self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
