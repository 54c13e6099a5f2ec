"""The built-in tasks, written on the same interface as a user's (common/learning/task.py).

- `breast-cancer` (MLP) and `digits` (small CNN): scikit-learn's bundled sets. In simulation a
  site trains on its partition of the training split (exactly as before tasks existed) and
  validates on its share of the fixed global test split; the coordinator may score the global
  model on that split (`server_test_data`). In deployment a site reads its CSV (node config
  `data-path`), whose columns must carry the dataset's feature names (any order).
- `csv`: any tabular problem. Run-config keys `features`, `label-column`, `classes`, `hidden`
  size the MLP; every site reads its own CSV (node config `data-path`). The coordinator holds
  no data.
- `fraud`: SYNTHETIC bank-fraud-like data (scikit-learn `make_classification`, about 1.5 %
  positives, deterministic from the run seed); it reports `recall` and `precision` of the
  fraud class besides the default metrics (`pr_auc` is the one to watch on such data).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from common import wire
from common.errors import InputError
from common.learning import data
from common.learning.models import MLP, build_model
from common.learning.task import SiteInfo, Task, TrainSettings
from common.learning.training import derive_seed, predict, tensor_dataset

MIN_SITE_ROWS = 10  # a site CSV with fewer rows is refused: too few to train and validate on
VALIDATION_FRACTION = 0.2  # deployment: the share of a site's CSV it validates on


@dataclass(frozen=True)
class Arrays:
    """A bundled set as arrays: the training split (sites' partitions) and the global test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class BundledTask(Task):
    """A task on data every machine can make itself (a bundled or generated set): simulation
    sites hold partitions of its training split; the coordinator may hold its test split."""

    info: data.DatasetInfo

    def arrays(self) -> Arrays:
        raise NotImplementedError

    def load_data(self, site: SiteInfo) -> tuple[Dataset, Dataset]:
        if site.partition_id is None or site.num_partitions is None:
            return self.load_site_csv(site)
        if not 0 <= site.partition_id < site.num_partitions:
            raise InputError(f"partition-id {site.partition_id} is outside 0..{site.num_partitions - 1}")
        a = self.arrays()
        spec = str(self.config.get("partition", "iid"))
        train = data.partition_indices(a.y_train, site.num_partitions, spec, site.seed)[site.partition_id]
        return (tensor_dataset(a.x_train[train], a.y_train[train]),
                tensor_dataset(*validation_share(a.x_test, a.y_test, site.partition_id, site.num_partitions)))

    def load_site_csv(self, site: SiteInfo) -> tuple[Dataset, Dataset]:
        raise InputError(f"task {self.name!r} needs node config {wire.PARTITION_ID!r} (simulation)")

    def server_test_data(self) -> Dataset | None:
        a = self.arrays()
        return tensor_dataset(a.x_test, a.y_test)

    def pooled_train_data(self) -> Dataset:
        """The whole training split (the centralized reference trains on it)."""
        a = self.arrays()
        return tensor_dataset(a.x_train, a.y_train)


def validation_share(x: np.ndarray, y: np.ndarray, site: int, sites: int) -> tuple[np.ndarray, np.ndarray]:
    """Site `site`'s share of a test split: contiguous near-equal slices, so that the shares of
    all sites together are exactly the split (federated evaluation then covers the same
    examples as the coordinator's). Empty when there are more sites than examples."""
    idx = np.array_split(np.arange(len(y)), sites)[site]
    return x[idx], y[idx]


class SklearnTask(BundledTask):
    """breast-cancer or digits, as FedSeal trained them before tasks existed."""

    def __init__(self, dataset: str, config=None) -> None:
        super().__init__(config)
        self.name, self.info = dataset, data.dataset_info(dataset)

    def build_model(self) -> nn.Module:
        return build_model(self.name)

    def arrays(self) -> Arrays:
        s = data.load_split(self.name)
        return Arrays(s.x_train, s.y_train, s.x_test, s.y_test)

    def load_site_csv(self, site: SiteInfo) -> tuple[Dataset, Dataset]:
        label = str(site.node_config.get(wire.LABEL_COLUMN, "label"))
        x, y = read_site_csv(site, label, self.info, data.feature_names(self.name))
        return split_validation(x, y)


class CsvTask(Task):
    """Any tabular classification: each site's CSV at node config `data-path`, with exactly the
    run's `features` columns (any order) and its `label-column` of integers 0..classes-1."""

    name = "csv"

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.features = parse_names(self.config.get("features", ""))
        self.label_column = str(self.config.get("label-column", "label"))
        self.classes = int(self.config.get("classes", 2))
        self.hidden = parse_sizes(self.config.get("hidden", "32"))
        if not self.features:
            raise InputError("task csv needs run-config key 'features': the feature column names, comma-separated")
        if self.label_column in self.features:
            raise InputError(f"task csv: label-column {self.label_column!r} is also listed in features")
        if self.classes < 2:
            raise InputError(f"task csv: classes must be >= 2, got {self.classes}")
        self.info = data.DatasetInfo("csv", len(self.features), self.classes)

    def build_model(self) -> nn.Module:
        return mlp(len(self.features), self.hidden, self.classes)

    def load_data(self, site: SiteInfo) -> tuple[Dataset, Dataset]:
        return split_validation(*read_site_csv(site, self.label_column, self.info, self.features))


class FraudTask(BundledTask):
    """Synthetic card-fraud-like data: 16 features, about 1.5 % fraud, an MLP."""

    name = "fraud"
    info = data.DatasetInfo("fraud", 16, 2)

    def build_model(self) -> nn.Module:
        return MLP(self.info.n_features, 2)

    def arrays(self) -> Arrays:
        return fraud_arrays(int(self.config.get("seed", 0)))

    def evaluate(self, model: nn.Module, data_: Dataset) -> dict[str, float]:
        from sklearn import metrics

        out = super().evaluate(model, data_)
        logits, labels = predict(model, data_)
        y, predicted = labels.numpy(), logits.argmax(dim=1).numpy()
        out["recall"] = float(metrics.recall_score(y, predicted, zero_division=0))
        out["precision"] = float(metrics.precision_score(y, predicted, zero_division=0))
        return out


FRAUD_EXAMPLES = 10_000
FRAUD_POSITIVE_SHARE = 0.015


@functools.lru_cache(maxsize=4)
def fraud_arrays(seed: int) -> Arrays:
    """The synthetic fraud set of run seed `seed`: make_classification, stratified test split,
    standardized with training statistics."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=FRAUD_EXAMPLES, n_features=16, n_informative=6, n_redundant=4,
                               n_clusters_per_class=2, weights=[1 - FRAUD_POSITIVE_SHARE], flip_y=0.002,
                               class_sep=1.0, random_state=seed)
    y = y.astype(np.int64)
    train, test = data.train_test_indices(y)
    x_train, x_test = data.standardize(x[train], x[test])
    return Arrays(x_train, y[train], x_test, y[test])


def mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Module:
    """n_in -> hidden[0] -> ... -> n_out, ReLU between layers."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(n_in, size), nn.ReLU()]
        n_in = size
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


def parse_names(text) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (a list is taken as it is)."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def parse_sizes(text) -> tuple[int, ...]:
    """'64,32' -> (64, 32); InputError unless every size is a whole number >= 1."""
    try:
        sizes = tuple(int(s) for s in parse_names(text))
    except ValueError:
        sizes = (0,)
    if not sizes or min(sizes) < 1:
        raise InputError(f"hidden must be layer sizes like '64,32' (whole numbers >= 1), got {text!r}")
    return sizes


def read_site_csv(site: SiteInfo, label_column: str, info: data.DatasetInfo,
                  features: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The CSV at node config `data-path`, its columns checked by name; InputError if it has
    fewer than MIN_SITE_ROWS rows; a warning if it holds one class only."""
    if wire.DATA_PATH not in site.node_config:
        raise InputError(f"node config needs {wire.DATA_PATH!r}: this site's CSV file")
    path = str(site.node_config[wire.DATA_PATH])
    x, y = data.load_csv(path, label_column, info, features)
    refusal, warn = csv_problems(y, info.n_classes)
    if refusal:
        raise InputError(f"{path}: {refusal}")
    for problem in warn:
        warnings.warn(f"{path}: {problem}", stacklevel=2)
    return x, y


def csv_problems(y: np.ndarray, classes: int) -> tuple[str | None, list[str]]:
    """What is wrong with a site's labels: (why it is refused: fewer than MIN_SITE_ROWS rows, or
    None; warnings: one class only)."""
    refusal = (f"only {len(y)} rows; a site needs at least {MIN_SITE_ROWS} to train and validate"
               if len(y) < MIN_SITE_ROWS else None)
    present = np.unique(y)
    warn = [f"every row has label {int(present[0])}: a site with one class of {classes} cannot teach the "
            "model the others (check label-column)"] if len(present) == 1 else []
    return refusal, warn


def split_validation(x: np.ndarray, y: np.ndarray) -> tuple[TensorDataset, TensorDataset]:
    """A site's CSV as (training, validation): a fixed stratified VALIDATION_FRACTION held out."""
    train, val = data.train_test_indices(y, VALIDATION_FRACTION)
    return tensor_dataset(x[train], y[train]), tensor_dataset(x[val], y[val])


BUILTIN = {"breast-cancer": lambda c: SklearnTask("breast-cancer", c), "digits": lambda c: SklearnTask("digits", c),
           "csv": CsvTask, "fraud": FraudTask}


def builtin(name: str, config=None) -> Task:
    """The built-in task `name` with the run's task config."""
    return BUILTIN[name](config)


def seeded_model(task: Task, seed: int) -> nn.Module:
    """task.build_model() with torch seeded first: every party builds the same initial model."""
    torch.manual_seed(seed)
    return task.build_model()


def centralized_reference(task: Task, *, epochs: int, lr: float, batch_size: int, seed: int) -> dict[str, float] | None:
    """Train the task's model from the run's initial weights on the pooled training data and score
    it on the coordinator's test data: the reference a federation is compared with (give it the
    federation's total epochs, rounds x local epochs). None unless the task has both (built-ins)."""
    pooled = getattr(task, "pooled_train_data", None)
    test = task.server_test_data()
    if pooled is None or test is None:
        return None
    model = seeded_model(task, seed)
    task.train(model, pooled(), TrainSettings(epochs, lr, batch_size, derive_seed(seed, "centralized")))
    return {**task.evaluate(model, test), "examples": len(test)}
