"""Bit packing of quantization codes: exact layout, round trips, validation, no JAX import."""

import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dq_jax.quant.packing import pack, packed_nbytes, unpack

REPO = pathlib.Path(__file__).resolve().parents[1]
RANGES = {1: (-1, 1), 2: (-2, 1), 4: (-8, 7), 8: (-128, 127)}


def random_codes(rng, bits, shape, dtype=np.int8):
    lo, hi = RANGES[bits]
    codes = rng.integers(lo, hi + 1, size=shape)
    if bits == 1:
        codes = np.where(codes >= 0, 1, -1)
    return codes.astype(dtype)


# Each case: codes, bits, expected bytes (little-endian fields inside a byte, padded with 0).
HAND = [
    # 2-bit: -1 -> 0b11, 0 -> 0b00, 1 -> 0b01; byte0 = 11 | 00<<2 | 01<<4 | 01<<6 = 0x53.
    ([-1, 0, 1, 1, -1], 2, [0x53, 0x03]),
    # 1-bit: -1 -> 0, +1 -> 1; bits 1,0,0,1,1,1,0,1 from the LSB = 0xB9, then 1 -> 0x01.
    ([1, -1, -1, 1, 1, 1, -1, 1, 1], 1, [0xB9, 0x01]),
    # 4-bit: -8 -> 0x8, 7 -> 0x7 (high nibble), -1 -> 0xF.
    ([-8, 7, -1], 4, [0x78, 0x0F]),
    # 8-bit: plain two's complement bytes.
    ([-127, 127, 0, -1, -128], 8, [0x81, 0x7F, 0x00, 0xFF, 0x80]),
    # 2-bit extremes -2 -> 0b10, 1 -> 0b01: 10 | 01<<2 | 10<<4 | 01<<6 = 0x66.
    ([-2, 1, -2, 1], 2, [0x66]),
]


@pytest.mark.parametrize("codes, bits, expected", HAND)
def test_hand_written_layout(codes, bits, expected):
    packed = pack(np.array(codes, np.int32), bits)
    assert packed.dtype == np.uint8
    assert packed.tolist() == expected
    back = unpack(np.array(expected, np.uint8), bits, (len(codes),))
    assert back.dtype == np.int8
    assert back.tolist() == codes


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(), (1,), (3,), (7,), (9,), (1001,), (3, 5), (2, 3, 7), (4, 0)])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_round_trip(bits, shape, dtype):
    rng = np.random.default_rng([bits, len(shape), int(np.prod(shape))])
    codes = random_codes(rng, bits, shape, dtype)
    packed = pack(codes, bits)
    n = int(np.prod(shape))
    assert packed.shape == (math.ceil(n * bits / 8),)
    back = unpack(packed, bits, shape)
    assert back.dtype == np.int8 and back.shape == shape
    np.testing.assert_array_equal(back, codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_byte_count_and_zero_padding(bits):
    rng = np.random.default_rng(bits)
    for n in range(0, 41):
        codes = random_codes(rng, bits, (n,))
        packed = pack(codes, bits)
        assert len(packed) == packed_nbytes(n, bits) == math.ceil(n * bits / 8)
        used = n * bits - 8 * (len(packed) - 1)  # bits used in the last byte
        if n and used < 8:
            assert packed[-1] >> used == 0


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_round_trip_property(data):
    bits = data.draw(st.sampled_from([1, 2, 4, 8]))
    lo, hi = RANGES[bits]
    elems = st.sampled_from([-1, 1]) if bits == 1 else st.integers(lo, hi)
    codes = data.draw(hnp.arrays(np.int16, hnp.array_shapes(min_dims=0, max_dims=3, max_side=9), elements=elems))
    packed = pack(codes, bits)
    assert len(packed) == packed_nbytes(codes.size, bits)
    np.testing.assert_array_equal(unpack(packed, bits, codes.shape), codes)


def test_large_input_is_vectorized():
    rng = np.random.default_rng(0)
    for bits in (1, 2, 4, 8):
        codes = random_codes(rng, bits, (2_000_003,))
        np.testing.assert_array_equal(unpack(pack(codes, bits), bits, codes.shape), codes)


def test_unpack_accepts_bytes_and_int_shape():
    assert unpack(bytes([0x53, 0x03]), 2, 5).tolist() == [-1, 0, 1, 1, -1]


@pytest.mark.parametrize(
    "codes, bits", [([0, 1], 1), ([2], 1), ([2], 2), ([-3], 2), ([8], 4), ([-9], 4), ([128], 8), ([-129], 8)]
)
def test_out_of_range_codes_raise(codes, bits):
    arr = np.array(codes, np.int32)
    with pytest.raises(ValueError, match=rf"min={arr.min()}, max={arr.max()}"):
        pack(arr, bits)


@pytest.mark.parametrize("bits", [0, 3, 5, 16])
def test_unsupported_bits_raise(bits):
    with pytest.raises(ValueError, match=rf"bits={bits}.*\(1, 2, 4, 8\)"):
        pack(np.zeros(4, np.int8), bits)
    with pytest.raises(ValueError, match=rf"bits={bits}"):
        unpack(np.zeros(4, np.uint8), bits, (4,))
    with pytest.raises(ValueError, match=rf"bits={bits}"):
        packed_nbytes(4, bits)


def test_wrong_byte_count_raises():
    with pytest.raises(ValueError, match="expected 2"):
        unpack(np.zeros(3, np.uint8), 2, (5,))
    with pytest.raises(ValueError, match="expected 1"):
        unpack(np.zeros(0, np.uint8), 8, ())


def test_float_codes_raise():
    with pytest.raises(TypeError):
        pack(np.array([1.0, -1.0]), 1)


def test_imports_without_jax():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    code = "import sys; import dq_jax.quant.packing; assert 'jax' not in sys.modules, 'jax imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
