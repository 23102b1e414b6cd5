"""A PyTorch `pytorch_model.bin` state dict read with numpy alone.

`torch.save` writes a zip archive: `<name>/data.pkl`, a pickle of the state dict whose tensors
point at raw storages `<name>/data/<key>` (little-endian) through persistent ids. This reads it
with an unpickler that admits only what a state dict holds (an `OrderedDict`, storages and
`torch._utils._rebuild_tensor_v2`), like `torch.load(weights_only=True)` does, and refuses
anything else, so a checkpoint cannot run code. bfloat16 tensors come back as float32.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np

# torch storage class -> (numpy dtype of its bytes, whether they are bfloat16)
_STORAGES = {
    "FloatStorage": (np.float32, False),
    "DoubleStorage": (np.float64, False),
    "HalfStorage": (np.float16, False),
    "BFloat16Storage": (np.uint16, True),
    "LongStorage": (np.int64, False),
    "IntStorage": (np.int32, False),
    "ShortStorage": (np.int16, False),
    "CharStorage": (np.int8, False),
    "ByteStorage": (np.uint8, False),
    "BoolStorage": (np.bool_, False),
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype, self.bfloat16 = _STORAGES[name]


class _Storage:
    """A flat storage's elements; bfloat16 as float32."""

    def __init__(self, data: bytes, kind: _StorageType):
        values = np.frombuffer(data, kind.dtype)
        self.values = (values.astype(np.uint32) << 16).view(np.float32) if kind.bfloat16 else values


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_):
    """`torch._utils._rebuild_tensor_v2`: a view of the storage, copied out."""
    values = storage.values
    if not size:
        return values[offset].copy()
    strides = [s * values.itemsize for s in stride]
    return np.lib.stride_tricks.as_strided(values[offset:], tuple(size), strides).copy()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict; this reader refuses it.")

    def persistent_load(self, pid):
        _, kind, key, _location, _numel = pid  # ("storage", storage type, key, device, numel)
        return _Storage(self.archive.read(f"{self.prefix}/data/{key}"), kind)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """{name: numpy array} of a `torch.save`d state dict (the zip format torch writes since 1.6)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a zip-format PyTorch checkpoint (the legacy format torch wrote before 1.6); "
            "re-save it with a current torch, or convert it to safetensors."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} holds {len(pickles)} data.pkl files; expected one state dict.")
        prefix = pickles[0][: -len("/data.pkl")]
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path} was saved big-endian; this reader reads little-endian checkpoints.")
        with archive.open(pickles[0]) as f:
            state = _Unpickler(f, archive, prefix).load()
    return {k: np.asarray(v) for k, v in state.items()}
