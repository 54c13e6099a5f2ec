"""Models of shapes the built-in ones lack, and a way to run them end to end.

- `BatchNormMLP`: BatchNorm1d (an int64 0-dim `num_batches_tracked` buffer, float running
  statistics), a learnable 0-dim scale and a bool buffer; `hidden=1024` gives `wide_model()`, a
  model of over 1M parameters (1,085,443 parameters; 1,087,495 values with the buffers).
- `BatchNormCNN`: 4-dim conv kernels and BatchNorm2d, for (1, 8, 8) images.

tests/anymodel_apps.py runs `wide_model` end to end.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchNormMLP(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear -> ReLU -> Linear, times a learnable 0-dim scale;
    with a bool buffer (`enabled`) that no training changes."""

    def __init__(self, n_features: int = 30, n_classes: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
        self.scale = nn.Parameter(torch.tensor(1.0))  # 0-dim float32 parameter
        self.register_buffer("enabled", torch.tensor([True, False, True]))  # a bool buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


class BatchNormCNN(nn.Module):
    """Conv -> BatchNorm2d -> ReLU -> pool -> Linear, for (1, 8, 8) images."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 4 * 4, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, 8, 8)).flatten(1))


WIDE_HIDDEN = 1024


def batchnorm_mlp(seed: int = 0, hidden: int = 64) -> nn.Module:
    """A seeded BatchNormMLP for breast-cancer's 30 features."""
    torch.manual_seed(seed)
    return BatchNormMLP(hidden=hidden)


def wide_model() -> nn.Module:
    """The over-1M-parameter model (unseeded: initial_model seeds torch before it builds)."""
    return BatchNormMLP(hidden=WIDE_HIDDEN)
