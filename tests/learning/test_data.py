"""common/learning/data.py: bundled loaders, the fixed test split, partitions, site CSVs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InputError
from common.learning import data


@pytest.mark.parametrize("name,n,features,classes", [("breast-cancer", 569, 30, 2), ("digits", 1797, 64, 10)])
def test_load_split_shapes_and_standardization(name, n, features, classes):
    split = data.load_split(name)
    assert len(split.y_train) + len(split.y_test) == n
    assert split.x_train.shape[1] == split.x_test.shape[1] == features
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    assert set(np.unique(split.y_train)) == set(range(classes))
    assert 0.18 < len(split.y_test) / n < 0.22
    axis = 0 if name == "breast-cancer" else None
    np.testing.assert_allclose(split.x_train.mean(axis=axis), 0, atol=1e-4)
    np.testing.assert_allclose(split.x_train.std(axis=axis), 1, atol=1e-3)


def test_test_split_is_fixed_disjoint_and_stratified():
    y = data._load_raw("breast-cancer")[1]
    train, test = data.train_test_indices(y)
    train2, test2 = data.train_test_indices(y)
    assert np.array_equal(test, test2) and np.array_equal(train, train2)
    assert not set(train) & set(test) and len(train) + len(test) == len(y)
    assert abs(y[test].mean() - y.mean()) < 0.01  # class balance kept


def test_unknown_dataset():
    with pytest.raises(InputError, match="unknown dataset 'mnist'"):
        data.dataset_info("mnist")


def test_iid_partition_sizes_and_cover():
    y = data.load_split("digits").y_train
    parts = data.partition_indices(y, 5, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(y)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))


def test_partitions_are_seeded():
    y = data.load_split("digits").y_train
    for spec in ("iid", "dirichlet:0.5"):
        a = data.partition_indices(y, 4, spec, seed=1)
        b = data.partition_indices(y, 4, spec, seed=1)
        c = data.partition_indices(y, 4, spec, seed=2)
        assert all(np.array_equal(x, z) for x, z in zip(a, b))
        assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def _skew(y, parts):
    """Mean share of a site's most common class (1.0 = every site holds one class)."""
    return float(np.mean([np.bincount(y[p]).max() / len(p) for p in parts]))


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    y = data.load_split("digits").y_train
    iid = _skew(y, data.partition_indices(y, 5, "iid", 0))
    mild = _skew(y, data.partition_indices(y, 5, "dirichlet:100", 0))
    strong = _skew(y, data.partition_indices(y, 5, "dirichlet:0.1", 0))
    assert iid < 0.2 and mild < 0.2  # 10 balanced classes: about 0.1
    assert strong > 0.4


@settings(max_examples=40, deadline=None)
@given(sites=st.integers(1, 60), alpha=st.floats(0.01, 10), seed=st.integers(0, 2**31))
def test_dirichlet_every_site_non_empty_and_disjoint(sites, alpha, seed):
    y = data.load_split("breast-cancer").y_train
    parts = data.partition_indices(y, sites, f"dirichlet:{alpha}", seed)
    assert len(parts) == sites and min(len(p) for p in parts) >= 1
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))


def test_every_site_non_empty_at_the_limit():
    y = np.array([0] * 5 + [1] * 2)
    parts = data.partition_indices(y, 7, "dirichlet:0.01", 0)
    assert sorted(len(p) for p in parts) == [1] * 7


@pytest.mark.parametrize("spec,msg", [("dirichlet:0", "ALPHA"), ("dirichlet:x", "ALPHA"), ("dirichlet", "ALPHA"),
                                      ("shards", "unknown partition")])
def test_bad_partition_spec(spec, msg):
    with pytest.raises(InputError, match=msg):
        data.parse_partition(spec)


def test_more_sites_than_examples():
    with pytest.raises(InputError, match="only 3 training examples"):
        data.partition_indices(np.array([0, 1, 0]), 4, "iid", 0)


def test_load_partition_matches_partition_indices():
    split = data.load_split("breast-cancer")
    idx = data.partition_indices(split.y_train, 3, "iid", 7)[2]
    x, y = data.load_partition("breast-cancer", 2, 3, "iid", 7)
    assert np.array_equal(x, split.x_train[idx]) and np.array_equal(y, split.y_train[idx])
    with pytest.raises(InputError, match="partition-id 3"):
        data.load_partition("breast-cancer", 3, 3, "iid", 7)


# --- site CSV -----------------------------------------------------------------------------

INFO = data.dataset_info("breast-cancer")


@pytest.fixture()
def site_csv(tmp_path):
    x, y = data._load_raw("breast-cancer")
    path = tmp_path / "site.csv"
    data.write_csv(path, x[:50], y[:50], label_column="diagnosis")
    return path


def test_csv_loads_and_standardizes_with_site_stats(site_csv):
    x, y = data.load_csv(site_csv, "diagnosis", INFO)
    assert x.shape == (50, 30) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    assert np.array_equal(y, data._load_raw("breast-cancer")[1][:50])


def test_csv_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        data.load_csv(tmp_path / "nope.csv", "label", INFO)


def test_csv_unreadable(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="cannot read"):
        data.load_csv(path, "label", INFO)


def test_csv_missing_label_column(site_csv):
    with pytest.raises(InputError, match="no label column 'label'; columns are: f0, f1"):
        data.load_csv(site_csv, "label", INFO)


def test_csv_non_numeric_feature_names_line_and_column(site_csv):
    lines = site_csv.read_text().splitlines()
    cells = lines[3].split(",")
    cells[4] = "abc"
    lines[3] = ",".join(cells)
    site_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"line 4, column 'f4': 'abc' is not a finite number"):
        data.load_csv(site_csv, "diagnosis", INFO)


def test_csv_bad_label_and_feature_count(tmp_path):
    path = tmp_path / "s.csv"
    data.write_csv(path, np.zeros((2, 30)), np.array([0, 1]))
    path.write_text(path.read_text().replace(",1\n", ",7\n"))
    with pytest.raises(InputError, match=r"line 3, column 'label': label '7' is not an integer in 0..1"):
        data.load_csv(path, "label", INFO)
    data.write_csv(path, np.zeros((2, 5)), np.array([0, 1]))
    with pytest.raises(InputError, match="5 feature columns, but dataset 'breast-cancer' needs 30"):
        data.load_csv(path, "label", INFO)


def test_csv_empty_and_header_only(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("")
    with pytest.raises(InputError, match="empty file"):
        data.load_csv(path, "label", INFO)
    path.write_text(",".join([f"f{i}" for i in range(30)] + ["label"]) + "\n")
    with pytest.raises(InputError, match="no data rows"):
        data.load_csv(path, "label", INFO)
