"""Plain PyTorch training and evaluation loops over DataLoaders, deterministic for a given seed.

`common.learning.task.Task`'s default `train` and `evaluate` are these loops; later capabilities
wrap them (DP-SGD wraps the model, optimizer and loader; seals wrap the output).
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, TensorDataset

EVAL_BATCH = 1024  # examples per forward pass of the default evaluate


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of parts, e.g. (run seed, round, site)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# --- the loops --------------------------------------------------------------------------


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy globally; return a torch Generator for shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


class EpochPermutation(Sampler[int]):
    """One `torch.randperm(n, generator)` per epoch (RandomSampler draws a second, unused
    permutation at the end of every epoch, which would change the order of the next)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


def epoch_loader(data: Dataset, batch_size: int, generator: torch.Generator) -> DataLoader:
    """A DataLoader of shuffled minibatches (a fresh seeded permutation each epoch). A
    TensorDataset is indexed a whole batch at a time (one gather instead of one item per row)."""
    batches = BatchSampler(EpochPermutation(len(data), generator), batch_size, drop_last=False)
    if isinstance(data, TensorDataset):
        return DataLoader(data, sampler=batches, batch_size=None)
    return DataLoader(data, batch_sampler=batches)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The local optimizer: SGD with momentum 0.9 (fresh state every round)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def train_epochs(model: nn.Module, loader, *, epochs: int, lr: float,
                 optimizer: torch.optim.Optimizer | None = None) -> float:
    """Minibatch cross-entropy training of `model` over `loader` for `epochs`; the mean loss of
    the last epoch. DP-SGD passes Opacus' private model, optimizer and loader."""
    optimizer = optimizer or make_optimizer(model, lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            if len(yb):  # Poisson sampling (DP-SGD) may draw an empty batch
                total += float(loss.detach()) * len(yb)
                count += len(yb)
        last = total / max(count, 1)
    return last


@torch.no_grad()
def predict(model: nn.Module, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of `model` over all of `data`, in order, in eval mode."""
    model.eval()
    if isinstance(data, TensorDataset):
        batches = [data.tensors[:2]] if len(data) <= EVAL_BATCH else \
            [(data.tensors[0][i:i + EVAL_BATCH], data.tensors[1][i:i + EVAL_BATCH])
             for i in range(0, len(data), EVAL_BATCH)]
    else:
        batches = DataLoader(data, batch_size=EVAL_BATCH)
    logits, labels = [], []
    for xb, yb in batches:
        logits.append(model(xb))
        labels.append(torch.as_tensor(yb, dtype=torch.int64))
    if not logits:
        raise ValueError("cannot evaluate on an empty data set")
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """loss, accuracy, f1_macro, and (two classes, both present) roc_auc and pr_auc."""
    from sklearn import metrics

    loss = float(nn.functional.cross_entropy(logits, labels))
    y = labels.numpy()
    predicted = logits.argmax(dim=1).numpy()
    out = {"loss": loss, "accuracy": float(metrics.accuracy_score(y, predicted)),
           "f1_macro": float(metrics.f1_score(y, predicted, average="macro", zero_division=0))}
    if logits.shape[1] == 2 and len(np.unique(y)) == 2:
        score = torch.softmax(logits.double(), dim=1)[:, 1].numpy()
        out["roc_auc"] = float(metrics.roc_auc_score(y, score))
        out["pr_auc"] = float(metrics.average_precision_score(y, score))
    return {k: v for k, v in out.items() if math.isfinite(v)}




def tensor_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Features (float32) and integer labels (int64) as a TensorDataset."""
    return TensorDataset(torch.from_numpy(np.asarray(x, dtype=np.float32)),
                         torch.from_numpy(np.asarray(y, dtype=np.int64)))


def evaluate(model: nn.Module, data: Dataset) -> dict[str, float]:
    """classification_metrics of `model` over all of `data` (Task's default evaluate)."""
    return classification_metrics(*predict(model, data))


def train(model: nn.Module, data: Dataset, *, epochs: int, lr: float, batch_size: int, seed: int) -> float:
    """Train `model` in place with minibatch SGD over `data`; return the mean loss of the last epoch."""
    generator = seed_everything(seed)
    return train_epochs(model, epoch_loader(data, batch_size, generator), epochs=epochs, lr=lr)
