"""Datasets: bundled scikit-learn sets, the global test split, site partitions, site CSVs.

Everything here is deterministic given its seed and never touches the network:
`breast-cancer` (569 x 30, 2 classes) and `digits` (1,797 8x8 images, 10 classes) ship
with scikit-learn. Features come out float32 and labels int64.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError

DATASETS = ("breast-cancer", "digits")
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 20240601  # fixed: every run is scored on the same held-out examples
DIRICHLET_MAX_TRIES = 100


@dataclass(frozen=True)
class DatasetInfo:
    """Shape of a dataset: what the model needs to know."""

    name: str
    n_features: int
    n_classes: int
    image_shape: tuple[int, ...] | None = None  # (channels, height, width) for images


INFO = {
    "breast-cancer": DatasetInfo("breast-cancer", 30, 2),
    "digits": DatasetInfo("digits", 64, 10, (1, 8, 8)),
}


@dataclass(frozen=True)
class Split:
    """Standardized features and labels of the training and the global test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def dataset_info(name: str) -> DatasetInfo:
    """Return the shape of dataset `name`, or raise InputError naming the known ones."""
    if name not in INFO:
        raise InputError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return INFO[name]


def _load_raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets  # imported lazily: scikit-learn is slow to import

    dataset_info(name)
    bunch = datasets.load_breast_cancer() if name == "breast-cancer" else datasets.load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def train_test_indices(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                       seed: int = TEST_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of example indices into (train, test), both sorted."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def standardize(x_fit: np.ndarray, *others: np.ndarray, per_feature: bool = True) -> list[np.ndarray]:
    """Standardize arrays with the mean/std of `x_fit` (per feature, or one scalar)."""
    axis = 0 if per_feature else None
    mean = x_fit.mean(axis=axis)
    std = x_fit.std(axis=axis)
    std = np.where(std > 0, std, 1.0)
    return [((x - mean) / std).astype(np.float32) for x in (x_fit, *others)]


@functools.lru_cache(maxsize=4)
def load_split(name: str) -> Split:
    """Load dataset `name`, split off the fixed global test set, standardize with train stats.

    Tabular data is standardized per feature; images with one mean/std over all pixels.
    """
    x, y = _load_raw(name)
    train, test = train_test_indices(y)
    per_feature = dataset_info(name).image_shape is None
    x_train, x_test = standardize(x[train], x[test], per_feature=per_feature)
    return Split(x_train, y[train], x_test, y[test])


def parse_partition(spec: str) -> tuple[str, float | None]:
    """Parse `iid` or `dirichlet:ALPHA` into (kind, alpha); raise InputError otherwise."""
    if spec == "iid":
        return "iid", None
    kind, _, value = spec.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(value)
        except ValueError:
            alpha = float("nan")
        if math.isfinite(alpha) and alpha > 0:
            return "dirichlet", alpha
        raise InputError(f"partition {spec!r}: ALPHA in dirichlet:ALPHA must be a number > 0")
    raise InputError(f"unknown partition {spec!r}; use 'iid' or 'dirichlet:ALPHA' (e.g. dirichlet:0.3)")


def partition_indices(labels: np.ndarray, num_sites: int, spec: str, seed: int) -> list[np.ndarray]:
    """Split the indices of `labels` across `num_sites` sites; every site gets at least one.

    `iid`: a seeded shuffle cut into near-equal parts. `dirichlet:ALPHA`: for each class,
    site shares drawn from Dirichlet(ALPHA) (small ALPHA = strong label skew); draws are
    repeated (seeded) until no site is empty.
    """
    n = len(labels)
    if num_sites < 1:
        raise InputError(f"number of sites must be >= 1, got {num_sites}")
    if num_sites > n:
        raise InputError(f"{num_sites} sites but only {n} training examples: every site needs one")
    kind, alpha = parse_partition(spec)
    rng = np.random.default_rng([seed, num_sites])
    if kind == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(n), num_sites)]
    classes = np.unique(labels)
    for _ in range(DIRICHLET_MAX_TRIES):
        sites: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for site, part in enumerate(np.split(idx, cuts)):
                sites[site].append(part)
        parts = [np.sort(np.concatenate(p)) for p in sites]
        if min(len(p) for p in parts) > 0:
            return parts
    return _fill_empty(parts)


def _fill_empty(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Move one example from the largest site to each empty one (deterministic)."""
    parts = [p.copy() for p in parts]
    for i, part in enumerate(parts):
        if len(part) == 0:
            donor = max(range(len(parts)), key=lambda j: len(parts[j]))
            parts[i], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return parts


def load_partition(name: str, partition_id: int, num_sites: int, spec: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of site `partition_id` of the training split (simulation)."""
    if not 0 <= partition_id < num_sites:
        raise InputError(f"partition-id {partition_id} is outside 0..{num_sites - 1}")
    split = load_split(name)
    idx = partition_indices(split.y_train, num_sites, spec, seed)[partition_id]
    return split.x_train[idx], split.y_train[idx]


def feature_names(name: str) -> list[str]:
    """The feature column names of bundled dataset `name` (scikit-learn's, spaces as `_`): the
    header a site CSV of that dataset must have."""
    from sklearn import datasets  # imported lazily: scikit-learn is slow to import

    dataset_info(name)
    bunch = datasets.load_breast_cancer() if name == "breast-cancer" else datasets.load_digits()
    return [str(n).replace(" ", "_") for n in bunch.feature_names]


def load_csv(path: str | Path, label_column: str, info: DatasetInfo,
             features: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a site's own CSV (header row; numeric features; integer labels 0..n_classes-1).

    With `features`, the header must name exactly those feature columns (in any order); the
    columns come back in the order of `features`. Features are standardized with the site's own
    statistics. Raises InputError naming the file, and the line and column of the first bad value.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise InputError(f"{path}: empty file (a header row is required)")
    header = [cell.strip() for cell in rows[0]]
    if label_column not in header:
        raise InputError(f"{path}: no label column {label_column!r}; columns are: {', '.join(header)}")
    label_at = header.index(label_column)
    names = [h for i, h in enumerate(header) if i != label_at]
    order = None if features is None else _column_order(path, names, list(features))
    if len(names) != info.n_features:
        raise InputError(
            f"{path}: {len(names)} feature columns, but dataset {info.name!r} needs {info.n_features}"
        )
    rows_x, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            raise InputError(f"{path}: line {line} has {len(row)} values, the header has {len(header)}")
        values = []
        for col, cell in enumerate(row):
            try:
                value = float(cell)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value):
                raise InputError(f"{path}: line {line}, column {header[col]!r}: {cell!r} is not a finite number")
            values.append(value)
        label = values.pop(label_at)
        if label != int(label) or not 0 <= label < info.n_classes:
            raise InputError(
                f"{path}: line {line}, column {label_column!r}: label {row[label_at]!r} "
                f"is not an integer in 0..{info.n_classes - 1}"
            )
        rows_x.append(values)
        labels.append(int(label))
    if not labels:
        raise InputError(f"{path}: no data rows after the header")
    x = np.asarray(rows_x, dtype=np.float64)
    if order is not None:
        x = x[:, order]
    (x,) = standardize(x, per_feature=info.image_shape is None)
    return x, np.asarray(labels, dtype=np.int64)


def _column_order(path: Path, names: list[str], features: list[str]) -> list[int]:
    """Where each of `features` sits among the CSV's feature columns `names`; InputError naming
    the missing, unexpected or repeated columns."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    missing = [f for f in features if f not in names]
    unexpected = [n for n in names if n not in features]
    if repeated or missing or unexpected:
        parts = [f"{what}: {', '.join(cols[:5])}{' ...' if len(cols) > 5 else ''}" for what, cols in
                 (("missing", missing), ("unexpected", unexpected), ("repeated", repeated)) if cols]
        raise InputError(f"{path}: the feature columns do not match the task's {len(features)} features ("
                         + "; ".join(parts) + ")")
    return [names.index(f) for f in features]


def write_csv(path: str | Path, x: np.ndarray, y: np.ndarray, label_column: str = "label",
              feature_names: list[str] | None = None) -> None:
    """Write features and labels as a site CSV (header row; label last)."""
    names = feature_names or [f"f{i}" for i in range(x.shape[1])]
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*names, label_column])
        for row, label in zip(x, y):
            writer.writerow([*(repr(float(v)) for v in row), int(label)])
