"""ecafm.kernels.robust.median_inplace: the value of np.median to the last bit, on both paths."""

from __future__ import annotations

import numpy as np
import pytest

from ecafm.kernels.robust import _bracketed_median, median_inplace


def _cases():
    rng = np.random.default_rng(7)
    yield "normal", rng.normal(size=262144)
    yield "odd size", rng.normal(size=261633)
    yield "heavy tail", rng.standard_cauchy(size=100001)
    yield "few distinct values", rng.integers(0, 7, size=70000).astype(float)
    yield "two clusters at the median", np.r_[np.zeros(65536), 100 + rng.normal(size=65536)]
    yield "sorted descending", np.sort(rng.normal(size=90000))[::-1].copy()
    yield "leveling residual", np.abs(rng.laplace(size=511 * 512))
    yield "small", rng.normal(size=1001)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,a", list(_cases()), ids=[c[0] for c in _cases()])
def test_median_inplace_equals_numpy(name, a, dtype):
    a = a.astype(dtype)
    assert median_inplace(a.copy()) == float(np.median(a))


def test_bracket_path_is_taken_and_misses_fall_back():
    """Random data takes the sample bracket; a pattern with the sampling stride's period defeats
    the sample (every sampled value equal), so the bracket misses and the full partition runs."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=262144)
    assert _bracketed_median(a.copy()) == float(np.median(a))
    periodic = np.tile(np.r_[-5.0, rng.normal(size=63)], 4096)  # stride 64 samples only -5.0
    assert _bracketed_median(periodic.copy()) is None
    assert median_inplace(periodic.copy()) == float(np.median(periodic))
