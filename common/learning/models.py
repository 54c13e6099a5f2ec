"""The models FedSeal trains: an MLP for tabular data and a small CNN for 8x8 images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from common.learning.data import dataset_info


class MLP(nn.Module):
    """Two-layer perceptron: n_features -> hidden -> n_classes."""

    def __init__(self, n_features: int, n_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks and a linear head, for (1, 8, 8) images (about 12k parameters)."""

    def __init__(self, image_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (height // 4) * (width // 4), n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, *self.image_shape)))


_REGISTERED: dict[str, Callable[[], nn.Module]] = {}  # dataset -> builder, see register_model


def register_model(dataset: str, builder: Callable[[], nn.Module]) -> None:
    """Make `build_model(dataset)` return `builder()` in this process instead of the built-in model:
    how tests run a model of another shape (BatchNorm, over 1M parameters) through the code path
    the server and the sites use. Every process of a run must register it (tests/anymodel_apps.py
    does when its apps' component strings are loaded)."""
    dataset_info(dataset)
    _REGISTERED[dataset] = builder


def build_model(dataset: str, n_features: int | None = None, n_classes: int | None = None) -> nn.Module:
    """The model for `dataset` (input size and classes default to the dataset's own), or the one
    registered for it (`register_model`)."""
    info = dataset_info(dataset)
    if dataset in _REGISTERED and n_features is None and n_classes is None:
        return _REGISTERED[dataset]()
    n_features = info.n_features if n_features is None else n_features
    n_classes = info.n_classes if n_classes is None else n_classes
    if info.image_shape is not None:
        return SmallCNN(info.image_shape, n_classes)
    return MLP(n_features, n_classes)


def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as named numpy arrays (state_dict order): floating tensors as float32
    (what the watermark and the secure modes carry), integer and bool buffers (BatchNorm's int64
    `num_batches_tracked`) in their own dtype; every shape kept, 0-dim included."""
    out = {}
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu()
        out[name] = value.float().numpy().copy() if value.is_floating_point() else value.numpy().copy()
    return out


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load named numpy arrays into the model (names and shapes must match exactly; each value is
    cast to the dtype of the model's own tensor)."""
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)


def array_spec(arrays: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} of a set of arrays: what a valid reply must match."""
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in arrays.items()}


def is_averaged(dtype: str | np.dtype) -> bool:
    """Whether aggregation averages tensors of this dtype: floating ones (weights, biases, running
    statistics) are averaged in every mode; integer and bool tensors (counters such as BatchNorm's
    `num_batches_tracked`, flags, indices) are not: see `averaged_spec`."""
    return np.issubdtype(np.dtype(dtype), np.floating)


def averaged_spec(spec: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The tensors of `spec` that aggregation averages (the floating ones), in spec order. The
    others never enter an average or a secure vector: a site's counter is not a weight, a mean of
    flags is no flag, and an integer summed in he or masked mode would be rounded or clipped. The
    global model keeps its own values of them (`with_kept`)."""
    return {name: (shape, dtype) for name, (shape, dtype) in spec.items() if is_averaged(dtype)}


def with_kept(averaged: dict[str, np.ndarray], base: dict[str, np.ndarray],
              spec: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    """A new global model in spec order: the averaged tensors from `averaged`, every other tensor
    (integer, bool) unchanged from `base`, the model the round started from."""
    return {name: averaged[name] if is_averaged(dtype) else base[name] for name, (_, dtype) in spec.items()}


def param_count(spec: dict[str, tuple[tuple[int, ...], str]]) -> int:
    """How many values a model of this tensor list holds (the length of `flatten`)."""
    return sum(int(np.prod(shape, dtype=np.int64)) for shape, _ in spec.values())


def initial_model(dataset: str, seed: int) -> nn.Module:
    """The run's starting model: build_model(dataset) with weights drawn from `seed`."""
    torch.manual_seed(seed)
    return build_model(dataset)


def flatten(arrays: dict[str, np.ndarray], spec: dict[str, tuple[tuple[int, ...], str]],
            dtype: type = np.float64) -> np.ndarray:
    """The arrays of `spec` as one vector of `dtype` (secure modes send one vector), tensors in
    name order: sites and server agree whatever order their dicts hold."""
    return np.concatenate([np.asarray(arrays[name], dtype=dtype).ravel() for name in sorted(spec)])


def add_mean_update(base: dict[str, np.ndarray], spec: dict[str, tuple[tuple[int, ...], str]],
                    mean_update: np.ndarray) -> dict[str, np.ndarray]:
    """A secure round's new global model: `base` plus the flat mean update over the averaged
    tensors of `spec` (the vector the sites sent: `flatten` of their averaged tensors), every
    other tensor kept from `base`."""
    averaged = averaged_spec(spec)
    return with_kept(unflatten(flatten(base, averaged) + mean_update, averaged), base, spec)


def unflatten(vector: np.ndarray, spec: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    """Inverse of `flatten`: named arrays of the spec's shapes and dtypes, in the spec's order."""
    sizes = {name: int(np.prod(shape)) for name, (shape, _) in spec.items()}
    if sum(sizes.values()) != len(vector):
        raise ValueError(f"vector of {len(vector)} values for a model of {sum(sizes.values())}")
    parts, start = {}, 0
    for name in sorted(spec):
        shape, dtype = spec[name]
        parts[name] = np.asarray(vector[start:start + sizes[name]]).reshape(shape).astype(dtype)
        start += sizes[name]
    return {name: parts[name] for name in spec}
