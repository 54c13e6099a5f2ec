"""common/learning/models.py on models of any shape: dtypes and shapes kept, what aggregation
averages (floating tensors) and what it keeps (integer and bool buffers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.learning import models
from tests.anymodels import BatchNormCNN, batchnorm_mlp


def test_get_arrays_keeps_integer_and_bool_buffers_and_0_dim_shapes():
    net = batchnorm_mlp()
    net(torch.randn(8, 30))  # one training step of BatchNorm: num_batches_tracked becomes 1
    arrays = models.get_arrays(net)
    assert arrays["net.1.num_batches_tracked"].dtype == np.int64 and arrays["net.1.num_batches_tracked"].shape == ()
    assert arrays["net.1.num_batches_tracked"] == 1
    assert arrays["scale"].dtype == np.float32 and arrays["scale"].shape == ()
    assert arrays["enabled"].dtype == np.bool_
    assert all(a.dtype == np.float32 for n, a in arrays.items() if n not in ("net.1.num_batches_tracked", "enabled"))
    other = batchnorm_mlp(seed=1)
    models.set_arrays(other, arrays)
    back = models.get_arrays(other)
    assert all(np.array_equal(back[n], a) and back[n].dtype == a.dtype for n, a in arrays.items())
    assert other.net[1].num_batches_tracked.dtype == torch.int64


def test_conv_kernels_are_4_dim_float32():
    arrays = models.get_arrays(BatchNormCNN())
    assert arrays["features.0.weight"].shape == (8, 1, 3, 3) and arrays["features.1.num_batches_tracked"].shape == ()


def test_averaged_spec_holds_the_floating_tensors_in_spec_order():
    spec = models.array_spec(models.get_arrays(batchnorm_mlp()))
    averaged = models.averaged_spec(spec)
    assert list(averaged) == [n for n in spec if n not in ("net.1.num_batches_tracked", "enabled")]
    assert "scale" in averaged and "net.1.running_mean" in averaged and "net.1.running_var" in averaged
    assert models.param_count(averaged) == models.param_count(spec) - 1 - 3


def test_a_secure_rounds_update_moves_floats_and_keeps_integer_buffers():
    base = models.get_arrays(batchnorm_mlp())
    base["net.1.num_batches_tracked"] = np.array(4, dtype=np.int64)
    spec = models.array_spec(base)
    averaged = models.averaged_spec(spec)
    update = np.full(models.param_count(averaged), 0.25)
    new = models.add_mean_update(base, spec, update)
    assert list(new) == list(spec)
    assert {n: (a.shape, str(a.dtype)) for n, a in new.items()} == spec
    assert new["scale"] == np.float32(1.25) and new["scale"].shape == ()
    assert np.allclose(new["net.0.weight"], base["net.0.weight"] + 0.25)
    assert new["net.1.num_batches_tracked"] == 4 and np.array_equal(new["enabled"], base["enabled"])
    with pytest.raises(ValueError):  # the integer and bool buffers are not part of the vector
        models.add_mean_update(base, spec, np.zeros(models.param_count(spec)))


def test_with_kept_takes_averaged_tensors_and_keeps_the_rest_from_base():
    base = {"w": np.zeros(3, np.float32), "n": np.array(2, np.int64)}
    spec = models.array_spec(base)
    new = models.with_kept({"w": np.ones(3, np.float32), "n": np.array(99, np.int64)}, base, spec)
    assert np.array_equal(new["w"], np.ones(3)) and new["n"] == 2


def test_a_registered_model_is_what_build_model_and_initial_model_return():
    from common.errors import InputError

    saved = dict(models._REGISTERED)
    try:
        models.register_model("digits", BatchNormCNN)
        assert isinstance(models.build_model("digits"), BatchNormCNN)
        a, b = (models.get_arrays(models.initial_model("digits", 3)) for _ in range(2))
        assert all(np.array_equal(a[n], b[n]) for n in a)  # seeded like the built-in models
        with pytest.raises(InputError, match="unknown dataset"):
            models.register_model("wine", BatchNormCNN)
    finally:
        models._REGISTERED.clear()
        models._REGISTERED.update(saved)
    assert not isinstance(models.build_model("digits"), BatchNormCNN)
