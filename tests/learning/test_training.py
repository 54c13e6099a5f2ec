"""common/learning/models.py, common/learning/training.py and server/aggregation.py (FedAvg)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.learning import data, models, training
from server.aggregation import Update, fedavg


@pytest.mark.parametrize("name,classes", [("breast-cancer", 2), ("digits", 10)])
def test_models_output_shape_and_arrays_round_trip(name, classes):
    model = models.initial_model(name, 0)
    x = torch.zeros(4, data.dataset_info(name).n_features)
    assert model(x).shape == (4, classes)
    arrays = models.get_arrays(model)
    assert all(a.dtype == np.float32 for a in arrays.values())
    other = models.initial_model(name, 1)
    models.set_arrays(other, arrays)
    assert all(np.array_equal(arrays[k], v) for k, v in models.get_arrays(other).items())


def test_initial_model_is_seeded():
    a = models.get_arrays(models.initial_model("digits", 3))
    b = models.get_arrays(models.initial_model("digits", 3))
    c = models.get_arrays(models.initial_model("digits", 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_training_is_deterministic_and_learns():
    x, y = data.load_partition("breast-cancer", 0, 2, "iid", 0)
    split = data.load_split("breast-cancer")
    results = []
    for _ in range(2):
        model = models.initial_model("breast-cancer", 0)
        training.train(model, training.tensor_dataset(x, y), epochs=3, lr=0.05, batch_size=32, seed=training.derive_seed(0, 1, "p0"))
        results.append(models.get_arrays(model))
    assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])
    assert training.evaluate(model, training.tensor_dataset(split.x_test, split.y_test))["accuracy"] > 0.9


def test_derive_seed_differs_per_part():
    assert training.derive_seed(0, 1, "partition-0") != training.derive_seed(0, 1, "partition-1")
    assert training.derive_seed(0, 1, "partition-0") != training.derive_seed(0, 2, "partition-0")
    assert 0 <= training.derive_seed("x") < 2**63


def test_fedavg_weighted_in_float64_and_order_independent():
    """The float32 result is the float64 weighted mean rounded once (secure modes match it)."""
    rng = np.random.default_rng(0)
    ups = [Update(str(i), {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)},
                  n) for i, n in enumerate([10, 30, 60])]
    avg = fedavg(ups)
    exact = np.vectorize(lambda *v: math.fsum(x * u.num_examples for x, u in zip(v, ups)) / 100)(
        *(u.arrays["w"].astype(np.float64) for u in ups))
    assert avg["w"].dtype == np.float32
    assert np.array_equal(avg["w"], exact.astype(np.float32))
    float32_sum = sum(np.float32(u.num_examples / 100) * u.arrays["w"] for u in ups)
    assert not np.array_equal(avg["w"], float32_sum)  # a float32 accumulation rounds differently
    again = fedavg(list(reversed(ups)))
    assert all(np.array_equal(avg[k], again[k]) for k in avg)  # bit-identical
    with pytest.raises(ValueError):
        fedavg([])


def test_centralized_reference_learns():
    from common.learning.tasks import builtin, centralized_reference

    ref = centralized_reference(builtin("breast-cancer"), epochs=5, lr=0.05, batch_size=32, seed=0)
    assert ref["accuracy"] > 0.93 and ref["examples"] == len(data.load_split("breast-cancer").y_test)


def test_flatten_is_in_name_order_and_unflatten_inverts_it():
    """Sites and the server flatten the same model to the same vector whatever their dict order."""
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(4, np.float32)}
    spec = models.array_spec(arrays)
    flat = models.flatten(arrays, spec, np.float32)
    assert flat.dtype == np.float32 and flat.tolist() == [1, 1, 1, 1, 0, 1, 2, 3, 4, 5]
    assert np.array_equal(models.flatten(dict(reversed(arrays.items())), spec), flat)
    back = models.unflatten(flat, spec)
    assert list(back) == ["b", "a"] and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    with pytest.raises(ValueError, match="vector of 9 values for a model of 10"):
        models.unflatten(flat[:-1], spec)
