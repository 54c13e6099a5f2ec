"""The task interface: a site's own model, data, training and metrics (user code imports it as
`from common.task import Task, SiteInfo`).

A task is plain PyTorch. FedSeal calls `build_model()` (after seeding torch) on the server and
on every site, `load_data(site)` on each site, then `evaluate` on the received global model and
`train` on the site's training data; every security layer (watermark, seals, masking, CKKS, DP)
wraps those calls and nothing of them is inside the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn
from torch.utils.data import Dataset

from common.learning.training import evaluate as evaluate_loop
from common.learning.training import train as train_loop


@dataclass(frozen=True)
class SiteInfo:
    """Who a site is and where its data is.

    Attributes:
        site_id: the site's id (its seal key's name; the partition id in simulation).
        partition_id: simulation: which share of a built-in data set this site holds; else None.
        num_partitions: simulation: how many sites share it; else None.
        node_config: deployment: the SuperNode's `--node-config` (e.g. `data-path`); may be empty.
        seed: the run's seed.
    """

    site_id: str
    partition_id: int | None
    num_partitions: int | None
    node_config: dict = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class TrainSettings:
    """What `Task.train` gets from the run: local epochs, learning rate, batch size and the seed of
    this site's round (derived from run seed, round and site)."""

    epochs: int
    lr: float
    batch_size: int
    seed: int


class Task:
    """A federated learning problem. Subclass it, set `name`, write `build_model` and `load_data`;
    `train`, `evaluate` and `server_test_data` have defaults.

    `self.config` holds the run's task settings (run-config keys `features`, `label-column`,
    `classes`, `hidden`), for tasks that size their model from them (the built-in `csv` task).
    """

    name = "task"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = dict(config or {})

    def build_model(self) -> nn.Module:
        """A fresh model. FedSeal seeds torch before calling it, so every party builds the same one."""
        raise NotImplementedError(f"task {self.name!r} must define build_model()")

    def load_data(self, site: SiteInfo) -> tuple[Dataset, Dataset]:
        """This site's (training, validation) sets: torch Datasets of (x, y) pairs."""
        raise NotImplementedError(f"task {self.name!r} must define load_data(site)")

    def train(self, model: nn.Module, train_data: Dataset, settings: TrainSettings) -> dict[str, float]:
        """Train `model` in place; return metrics of the training ({"loss": mean loss of the last
        epoch}). Default: minibatch SGD with momentum 0.9 and cross-entropy over a DataLoader
        (FedSeal's own loop; `--dp sample` replaces it with the same loop under Opacus)."""
        return {"loss": train_loop(model, train_data, epochs=settings.epochs, lr=settings.lr,
                                   batch_size=settings.batch_size, seed=settings.seed)}

    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """Metrics of `model` on `data`. Default: `loss` (mean cross-entropy), `accuracy` and
        `f1_macro`, plus `roc_auc` and `pr_auc` (average precision) for two classes when both
        occur; scikit-learn's metric functions."""
        return evaluate_loop(model, data)

    def server_test_data(self) -> Dataset | None:
        """Data the coordinator may score the global model on (default None: it holds none)."""
        return None
