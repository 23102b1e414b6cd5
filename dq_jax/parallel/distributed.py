"""Multi-process runs on JAX's distributed runtime: start-up, process roles, host copies.

One process per host (GPU clusters) or per TPU VM worker; every process runs the same
command and the mesh spans the devices of all of them. Process 0 writes what a person reads
(metrics, results, exports, the HF directories); all processes write Orbax checkpoints
together. Nothing here is needed, or does anything, in a single-process run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator is and who this process is.

    Empty fields are read from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID`. `auto=True` lets JAX detect them on Slurm, Open MPI and Cloud TPU.
    `heartbeat_timeout`: seconds after which the survivors of a dead process stop with an error.
    """

    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    auto: bool = False
    heartbeat_timeout: int = 100
    initialization_timeout: int = 300
    cpu_collectives: str = "gloo"  # CPU cross-process collectives; GPUs and TPUs use their own

    def with_env(self, environ=None) -> DistributedConfig:
        env = os.environ if environ is None else environ
        c = self
        if not c.coordinator_address and env.get(ENV["coordinator_address"]):
            c = dataclasses.replace(c, coordinator_address=env[ENV["coordinator_address"]])
        for field, unset in (("num_processes", 0), ("process_id", -1)):
            value = env.get(ENV[field])
            if getattr(c, field) == unset and value:
                try:
                    c = dataclasses.replace(c, **{field: int(value)})
                except ValueError:
                    raise ValueError(f"{ENV[field]}={value!r} must be an integer.") from None
        return c

    @property
    def enabled(self) -> bool:
        return bool(self.coordinator_address) or self.auto


def initialize(cfg: DistributedConfig) -> bool:
    """Joins the distributed runtime if `cfg` asks for it (train/settings.py filled it from the
    environment and checked it); must run before any JAX computation. Returns True if this is a
    multi-process run."""
    if not cfg.enabled:
        return False
    import jax

    if cfg.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    kwargs: dict[str, Any] = dict(
        initialization_timeout=cfg.initialization_timeout, heartbeat_timeout_seconds=cfg.heartbeat_timeout
    )
    if not cfg.auto:
        kwargs.update(
            coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes, process_id=cfg.process_id
        )
    elif cfg.coordinator_address:
        kwargs.update(coordinator_address=cfg.coordinator_address)
    jax.distributed.initialize(**kwargs)
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def process_count() -> int:
    import jax

    return jax.process_count()


def is_main() -> bool:
    import jax

    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (no-op in a single process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def main_first(fn: Callable[[], T], name: str) -> T:
    """Runs `fn` on process 0, then on the others once it finished there. For idempotent work
    that writes shared files (generated data, a trained tokenizer): the others find it done."""
    if process_count() == 1:
        return fn()
    out = fn() if is_main() else None
    sync(name)
    return out if is_main() else fn()


def to_host(tree):
    """A pytree of (possibly multi-process sharded) arrays as numpy, whole, on every process."""
    import jax

    if process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.device_get(x)  # already whole here (numpy, or on this process's devices)

    return jax.tree.map(one, tree)
