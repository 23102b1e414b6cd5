"""Device mesh, logical-axis rules and the shardings of params, optimizer state and batches.

Mesh axes are `data`, `fsdp` and `tensor` (Auto axis types). Every parameter gets logical
axes from the quantization policy's classification of its path (`dq_jax.quant.policy.classify`, t5x
style) and the rules map them to mesh axes: vocab/mlp/heads ->
tensor, embed -> fsdp. Batches split over `data` and `fsdp` together: FSDP devices hold a
slice of every parameter and each computes its own part of the batch, so they do not repeat
each other's work. A dimension the mesh axis does not divide stays replicated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dq_jax.quant.policy import classify, key_names

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("embed", "fsdp"),
    ("positions", None),
    ("norm", None),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `(data, fsdp, tensor)` mesh over the first prod(shape) devices (three positive sizes, as
    train/settings.py checks them)."""
    shape = tuple(int(s) for s in shape)
    devices = list(jax.devices() if devices is None else devices)
    n = math.prod(shape)
    if n > len(devices):
        raise ValueError(
            f"mesh={shape} needs {n} devices but only {len(devices)} are available; "
            f"choose a mesh whose sizes multiply to at most {len(devices)}."
        )
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices[:n])


def resolve_mesh(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A -1 (at most one, as train/settings.py checks) takes the devices the other axes leave."""
    shape = tuple(int(s) for s in shape)
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        shape = tuple(jax.device_count() // rest if s == -1 else s for s in shape)
    return shape


def spec_for(shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh, rules=RULES) -> P:
    """PartitionSpec for logical `axes`; mesh axes that do not divide a dimension are dropped."""
    table = dict(rules)
    out = []
    for dim, name in zip(shape, axes):
        mesh_axes = table.get(name) if name is not None else None
        if isinstance(mesh_axes, str):
            mesh_axes = (mesh_axes,)
        size = math.prod(mesh.shape[a] for a in mesh_axes) if mesh_axes else 1
        out.append(
            None
            if not mesh_axes or size == 1 or dim % size
            else (mesh_axes[0] if len(mesh_axes) == 1 else tuple(mesh_axes))
        )
    return P(*out)


def param_shardings(params, mesh: Mesh, rules=RULES):
    """NamedShardings for a params tree: device or numpy arrays, ShapeDtypeStructs or scalars."""

    def one(keypath, leaf):
        path, shape = key_names(keypath), np.shape(leaf)
        return NamedSharding(mesh, spec_for(shape, classify(path, len(shape)).logical_axes, mesh, rules))

    return jax.tree_util.tree_map_with_path(one, params)


def state_shardings(tree, params, mesh: Mesh, rules=RULES):
    """Shardings for any tree holding param-shaped leaves (optimizer moments, train state):
    a leaf whose path ends with a parameter's path and has its shape is sharded like it;
    everything else (step counters, rng keys, scalars) is replicated."""
    by_path = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        by_path[key_names(keypath)] = leaf
    flat = jax.tree_util.tree_flatten_with_path(param_shardings(params, mesh, rules))[0]
    spec_by_path = {key_names(k): s for k, s in flat}

    def one(keypath, leaf):
        names = key_names(keypath)
        for start in range(len(names)):
            tail = names[start:]
            if tail in by_path and tuple(by_path[tail].shape) == tuple(np.shape(leaf)):
                return spec_by_path[tail]
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, ndim: int, leading: int = 0) -> NamedSharding:
    """Sharding of a batch array: `leading` unsharded axes (e.g. gradient accumulation), then the
    batch axis over data x fsdp, then the rest replicated."""
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES, *([None] * (ndim - leading - 1))))


def process_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
    """Rows of a global batch whose data this process's devices hold (sorted): what it loads.

    With one process, every row. With several, each loads only its share; processes whose
    devices replicate the same rows (e.g. a tensor axis across hosts) load the same rows."""
    shard = batch_sharding(mesh, 1)
    rows: set[int] = set()
    for index in shard.addressable_devices_indices_map((batch_size,)).values():
        rows.update(range(batch_size)[index[0]])
    return np.array(sorted(rows), np.int64)


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(batch_size: int, mesh: Mesh) -> None:
    n = data_parallel_size(mesh)
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} does not divide over the {n} data-parallel devices of mesh "
            f"{tuple(mesh.shape.values())} (data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}); "
            f"use a batch size that is a multiple of {n}."
        )
