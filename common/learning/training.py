"""Plain PyTorch training and evaluation loops, deterministic for a given seed.

Later capabilities wrap these (DP-SGD wraps the optimizer, seals wrap the output);
the loops themselves stay plain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class EvalResult:
    """Accuracy (0..1) and mean cross-entropy loss on a set of examples."""

    accuracy: float
    loss: float
    num_examples: int


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of parts, e.g. (run seed, round, site)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy globally; return a torch Generator for shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The local optimizer: SGD with momentum 0.9 (fresh state every round)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
          batch_size: int, seed: int) -> float:
    """Train `model` in place with minibatch SGD; return the mean loss of the last epoch."""
    gen = seed_everything(seed)
    xt, yt = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    optimizer = make_optimizer(model, lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(xt), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / max(count, 1)
    return last


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> EvalResult:
    """Accuracy and mean cross-entropy of `model` on (x, y)."""
    model.eval()
    logits = model(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    loss = float(nn.functional.cross_entropy(logits, yt))
    accuracy = float((logits.argmax(dim=1) == yt).float().mean())
    return EvalResult(accuracy=accuracy, loss=loss, num_examples=len(yt))


def centralized_reference(dataset: str, *, epochs: int, lr: float, batch_size: int, seed: int) -> EvalResult:
    """Train the same model from the same initial weights on the pooled training split.

    The reference a federation is compared with: give it the federation's total epochs
    (rounds x local epochs). Scored on the same global test split.
    """
    from common.learning.data import load_split
    from common.learning.models import initial_model

    split = load_split(dataset)
    model = initial_model(dataset, seed)
    train(model, split.x_train, split.y_train, epochs=epochs, lr=lr, batch_size=batch_size,
          seed=derive_seed(seed, "centralized"))
    return evaluate(model, split.x_test, split.y_test)
