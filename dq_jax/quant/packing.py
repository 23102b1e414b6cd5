"""Bit packing of signed integer quantization codes into bytes (NumPy only).

Codes are flattened in C order and stored ``bits`` bits each, little-endian within a byte:
code ``i`` occupies bits ``(i % (8 // bits)) * bits`` upward of byte ``i // (8 // bits)``,
and the last byte is zero-padded. 1-bit codes must be -1 or +1 and are stored as 0 / 1;
2-, 4- and 8-bit codes are stored in two's complement truncated to ``bits`` bits, so
ternary codes {-1, 0, 1} fit in 2 bits and symmetric 8-bit codes (-127..127) in 8.
This module must not import JAX: packed files are read where JAX is not installed.
"""

import numpy as np

BITS = (1, 2, 4, 8)


def _check_bits(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"bits={bits!r} is not supported; allowed: {BITS}")
    return int(bits)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``."""
    bits = _check_bits(bits)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return (int(n) * bits + 7) // 8


def _check_range(flat: np.ndarray, bits: int) -> None:
    if flat.size == 0:
        return
    lo, hi = flat.min(), flat.max()
    if bits == 1:
        if not np.all((flat == 1) | (flat == -1)):
            raise ValueError(f"1-bit codes must be -1 or +1; found min={lo}, max={hi} (or values in between)")
        return
    allowed = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if lo < allowed[0] or hi > allowed[1]:
        raise ValueError(f"{bits}-bit codes must lie in [{allowed[0]}, {allowed[1]}]; found min={lo}, max={hi}")


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packs integer ``codes`` (any shape) into a 1-D uint8 array of
    ``packed_nbytes(codes.size, bits)`` bytes."""
    bits = _check_bits(bits)
    codes = np.asarray(codes)
    if not (np.issubdtype(codes.dtype, np.integer) or codes.dtype == np.bool_):
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    flat = codes.reshape(-1)
    _check_range(flat, bits)
    if bits == 1:
        return np.packbits(flat > 0, bitorder="little")
    # In range, so the int8 cast is lossless and its bytes are the two's complement.
    u = flat.astype(np.int8, copy=False).view(np.uint8)
    if bits == 8:
        return u.copy()
    per_byte = 8 // bits
    u = u & np.uint8((1 << bits) - 1)
    padded = np.zeros(packed_nbytes(flat.size, bits) * per_byte, np.uint8)
    padded[: flat.size] = u
    lanes = padded.reshape(-1, per_byte)  # [nbytes, per_byte]
    out = lanes[:, 0].copy()
    for j in range(1, per_byte):  # at most 4 passes, each vectorized over all bytes
        out |= lanes[:, j] << np.uint8(j * bits)
    return out


def unpack(packed: np.ndarray, bits: int, shape) -> np.ndarray:
    """Inverse of :func:`pack`: returns int8 codes of ``shape`` (sign-extended)."""
    bits = _check_bits(bits)
    if isinstance(packed, (bytes, bytearray, memoryview)):
        packed = np.frombuffer(packed, np.uint8)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    packed = packed.reshape(-1)
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=np.int64))
    expected = packed_nbytes(n, bits)
    if packed.size != expected:
        raise ValueError(f"{packed.size} bytes cannot hold {bits}-bit codes of shape {shape}: expected {expected}")
    if bits == 1:
        ones = np.unpackbits(packed, count=n, bitorder="little")
        return (ones.astype(np.int8) * np.int8(2) - np.int8(1)).reshape(shape)
    if bits == 8:
        return packed.view(np.int8).copy().reshape(shape)
    per_byte = 8 // bits
    lanes = np.empty((packed.size, per_byte), np.uint8)  # [nbytes, per_byte]
    for j in range(per_byte):
        lanes[:, j] = packed >> np.uint8(j * bits)
    # Move each field to the top of the byte, then an arithmetic shift sign-extends it.
    top = (lanes.reshape(-1)[:n] << np.uint8(8 - bits)).view(np.int8)
    return (top >> np.int8(8 - bits)).reshape(shape)
