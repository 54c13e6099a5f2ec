"""Aggregators for `none` mode: known answers, float32, order independence, robustness."""

import numpy as np
import pytest

from server.aggregation import (
    AGGREGATORS,
    Update,
    aggregate,
    krum,
    median,
    trimmed_mean,
)


def _up(site, w, b=0.0, n=10):
    return Update(site, {"w": np.asarray(w, dtype=np.float32).reshape(2, 2),
                         "b": np.full(3, b, dtype=np.float32)}, n)


def _sites(rng, k, poisoned=False):
    ups = [Update(f"s{i}", {"w": rng.normal(size=(3, 4)).astype(np.float32),
                            "b": rng.normal(size=4).astype(np.float32)}, 10 + i) for i in range(k)]
    if poisoned:
        ups[-1] = Update("s-bad", {n: np.full_like(a, 1e6) for n, a in ups[-1].arrays.items()}, 10)
    return ups


def test_median_of_three_sites():
    out = median([_up("a", [1, 2, 3, 4], 1), _up("b", [10, 0, 3, 5], 2), _up("c", [2, 9, 3, -4], 7)])
    np.testing.assert_array_equal(out["w"], np.float32([[2, 2], [3, 4]]))
    np.testing.assert_array_equal(out["b"], np.full(3, 2, np.float32))


def test_trimmed_mean_drops_extremes():
    vals = [-100, 1, 2, 3, 500]  # 5 sites, 0.2 trims one per side -> mean(1, 2, 3)
    out = trimmed_mean([_up(f"s{i}", [v] * 4, v) for i, v in enumerate(vals)], trim_fraction=0.2)
    np.testing.assert_array_equal(out["w"], np.full((2, 2), 2, np.float32))
    np.testing.assert_array_equal(out["b"], np.full(3, 2, np.float32))
    with pytest.raises(ValueError):
        trimmed_mean([_up("a", [0] * 4)], trim_fraction=0.5)


def test_krum_picks_an_honest_update():
    honest = [_up(f"h{i}", [1 + 0.01 * i] * 4, 1) for i in range(4)]
    ups = honest + [_up("evil", [1e6] * 4, 1e6)]
    out = krum(ups, byzantine=1)  # n=5 > 2f+2=4
    assert any(np.array_equal(out["w"], h.arrays["w"]) and np.array_equal(out["b"], h.arrays["b"])
               for h in honest)


def test_krum_too_few_updates_falls_back_to_median():
    ups = [_up("a", [1] * 4), _up("b", [2] * 4), _up("c", [1e6] * 4)]  # n=3 <= 2f+2=4
    out, med = krum(ups, byzantine=1), median(ups)
    assert all(np.array_equal(out[k], med[k]) for k in med)


def test_fedavg_weights_by_examples():
    out = aggregate("fedavg", [_up("a", [0] * 4, 0, n=30), _up("b", [4] * 4, 4, n=10)])
    np.testing.assert_allclose(out["w"], np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(out["b"], np.ones(3), rtol=1e-6)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_float32_names_shapes_and_order_independent(name):
    ups = _sites(np.random.default_rng(1), 6)
    out = aggregate(name, ups)
    assert set(out) == {"w", "b"}
    assert all(out[k].dtype == np.float32 and out[k].shape == ups[0].arrays[k].shape for k in out)
    for seed in range(5):
        shuffled = list(ups)
        np.random.default_rng(seed).shuffle(shuffled)
        again = aggregate(name, shuffled)
        assert all(np.array_equal(out[k], again[k]) for k in out)  # bit-identical


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum"])
def test_one_poisoned_site_moves_robust_far_less_than_fedavg(name):
    rng = np.random.default_rng(2)
    clean = _sites(rng, 6)
    poisoned = _sites(np.random.default_rng(2), 6, poisoned=True)

    def shift(agg):
        a, b = aggregate(agg, clean), aggregate(agg, poisoned)
        return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)

    assert shift("fedavg") > 1e4
    assert shift(name) < 5.0
    assert shift(name) < shift("fedavg") / 1e4


def test_errors():
    with pytest.raises(ValueError, match="unknown aggregator"):
        aggregate("mean", [_up("a", [0] * 4)])
    with pytest.raises(ValueError):
        aggregate("median", [])
    with pytest.raises(ValueError, match="names or shapes"):
        median([_up("a", [0] * 4), Update("b", {"w": np.zeros(4, np.float32)}, 1)])
