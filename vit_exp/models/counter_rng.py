"""Counter-based random numbers for drop path: a draw is a pure function of integers (the optimizer
step, ``trainer.seed``, the msrun rank, the block, the branch, the sample), computed in the graph with
integer ops, so a run resumed at step t draws exactly what the uninterrupted run drew at step t (no
kernel state to save; MindSpore's CPU random kernels keep theirs out of reach of a checkpoint).

The mixer is lowbias32 (a murmur3-style finalizer: xor-shifts and multiplications by odd constants,
each a bijection) on 31 bits, in int64: every value is reduced below 2^31 before it is multiplied, so
no product reaches 2^62 and no op relies on integer wraparound (whose CPU behaviour we would be
trusting). ``mix`` is the graph's, ``mix_int`` the same function on Python ints
(the constants baked into the graph; the tests' reference)."""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

BITS = 31
MASK = (1 << BITS) - 1
GOLDEN = 0x1E3779B9  # 0x9E3779B9 (2^32 / golden ratio) mod 2^31, odd: spreads consecutive counters
_MULTIPLIERS = (0x7FEB352D, 0x046CA68B)  # odd, below 2^31 (lowbias32's constants, to 31 bits)
PATH_STRIDE = 1 << 20  # counters per branch and step: a worker's batch of up to 2^20 samples


def mix_int(h: int) -> int:
    """The mixer on a Python int (taken mod 2^31 first)."""
    h &= MASK
    h ^= h >> 16
    h = (h * _MULTIPLIERS[0]) & MASK
    h ^= h >> 15
    h = (h * _MULTIPLIERS[1]) & MASK
    return h ^ (h >> 16)


def mix(h: Tensor) -> Tensor:
    """``mix_int`` elementwise on an int64 tensor of values in [0, 2^31)."""
    h = ops.bitwise_xor(h, ops.bitwise_right_shift(h, 16))
    h = ops.bitwise_and(h * _MULTIPLIERS[0], MASK)
    h = ops.bitwise_xor(h, ops.bitwise_right_shift(h, 15))
    h = ops.bitwise_and(h * _MULTIPLIERS[1], MASK)
    return ops.bitwise_xor(h, ops.bitwise_right_shift(h, 16))


def combine(h: Tensor, value) -> Tensor:
    """``mix((h + value) mod 2^31)``: ``h`` and ``value`` ints or int64 tensors, not negative, their
    sum below 2^63."""
    return mix(ops.bitwise_and(h + value, MASK))


def run_key(seed: int, rank: int) -> int:
    """The constant a run's draws start from: ``trainer.seed`` and the msrun worker's rank (each
    worker's shard of the batch gets masks of its own)."""
    return mix_int(mix_int(seed) + GOLDEN * (rank + 1))


def step_key(step: Tensor, key: int) -> Tensor:
    """The key of optimizer step ``step`` (an int tensor, e.g. the optimizer's ``global_step``) of the
    run whose ``run_key`` is ``key``: an int64 tensor of the same shape, in [0, 2^31)."""
    return combine(ops.bitwise_and(step.astype(ms.int64), MASK), key)


def uniform_bits(key: Tensor, path: int, samples: int) -> Tensor:
    """``samples`` 31-bit draws (int64, uniform on [0, 2^31)) of residual branch ``path`` (``2 *
    block + branch``) under the step key ``key`` (shape (1,)): ``mix(key + GOLDEN * c)`` for the
    counter ``c = path * 2^20 + sample`` (splitmix's construction: distinct counters, distinct draws
    within a step; the key, itself mixed from the step, makes them differ from step to step)."""
    counters = ops.arange(samples, dtype=ms.int64) + path * PATH_STRIDE
    return combine(key, counters * GOLDEN)


def step_key_int(step: int, key: int) -> int:
    """``step_key`` on Python ints."""
    return mix_int((step & MASK) + key)


def uniform_bits_int(key: int, path: int, samples: int) -> list[int]:
    """``uniform_bits`` on Python ints (the tests' reference)."""
    return [mix_int(key + GOLDEN * (path * PATH_STRIDE + s)) for s in range(samples)]
