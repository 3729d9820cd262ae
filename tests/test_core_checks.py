"""The shared argument checks of grpo_guard.core."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_guard.core._checks import _SUM_FIRST, all_finite, check_finite

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 3 * _SUM_FIRST), dtype=st.sampled_from(DTYPES), scale=st.sampled_from([1.0, 1e4, 1e30, 1e300]),
       bad=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from([float("nan"), float("inf"), -float("inf")])),
                    max_size=3), seed=st.integers(0, 2**16))
def test_all_finite_answers_as_the_elementwise_test(n, dtype, scale, bad, seed):
    # large finite values whose sum overflows (1e30 in float32, 1e4 in float16) must still read as finite
    x = (torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)
    for pos, value in bad:
        if n:
            x[pos % n] = value
    assert all_finite(x) == bool(torch.isfinite(x).all())


def test_all_finite_on_overflowing_sums_and_other_dtypes():
    big = torch.full((4 * _SUM_FIRST,), 3e38)  # finite values, infinite float32 sum
    assert not bool(torch.isfinite(big.sum())) and all_finite(big)
    opposite = torch.cat([big, -big])
    assert all_finite(opposite)
    opposite[7] = float("inf")
    assert not all_finite(opposite)
    assert all_finite(torch.arange(10**4)) and all_finite(torch.ones(3, dtype=torch.bool))
    z = torch.zeros(2 * _SUM_FIRST, dtype=torch.complex64)
    assert all_finite(z)
    z[3] = complex(0, float("nan"))
    assert not all_finite(z)
    assert all_finite(torch.empty(0, 5))


@pytest.mark.parametrize("n", [3, 4 * _SUM_FIRST])
def test_check_finite_names_the_argument(n):
    x = torch.zeros(n)
    check_finite("noise", x)
    check_finite("noise", None)
    x[-1] = float("nan")
    with pytest.raises(ValueError, match="^noise: contains NaN or Inf"):
        check_finite("noise", x)
