"""What the quantizer tests (test_quant_tables, test_quant_families, test_quant_properties) share."""

import numpy as np

SHAPE = (3, 6)  # most tests share it, so compiled quantizers are reused
S = 1 / 64  # the step of every symmetric table below: max|x| = n / 64, so n / max|x| = 64


def bits_of(a):
    return np.asarray(a).view(np.uint32 if np.asarray(a).dtype == np.float32 else np.uint16)


def assert_bitwise_equal(a, b):
    np.testing.assert_array_equal(bits_of(a), bits_of(b))
