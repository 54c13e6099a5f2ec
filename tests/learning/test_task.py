"""common/learning/task.py (the interface), tasks.py (built-ins) and task_spec.py (loading a task)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics
from torch import nn

from common.errors import InputError
from common.learning import data, models
from common.learning.task_spec import load_task
from common.learning.tasks import (MIN_SITE_ROWS, CsvTask, FraudTask, builtin, centralized_reference, fraud_arrays,
                                   seeded_model)
from common.learning.training import derive_seed, tensor_dataset
from common.task import SiteInfo, TrainSettings


def _todays_loop(model, x, y, *, epochs, lr, batch_size, seed):
    """FedSeal's training loop before tasks existed (commit ca380ba), verbatim: the default
    Task.train must give the same weights bit for bit."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            optimizer.step()


def test_site_info_is_a_frozen_dataclass_with_the_contracts_fields():
    site = SiteInfo(site_id="3", partition_id=3, num_partitions=5, node_config={}, seed=0)
    assert [f.name for f in dataclasses.fields(SiteInfo)] == ["site_id", "partition_id", "num_partitions",
                                                             "node_config", "seed"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        site.seed = 1


@pytest.mark.parametrize("name", ["breast-cancer", "digits"])
def test_default_train_is_todays_loop_bit_for_bit(name):
    task = builtin(name)
    train_data, _ = task.load_data(SiteInfo("1", 1, 3, {}, 0))
    x, y = data.load_partition(name, 1, 3, "iid", 0)
    assert np.array_equal(train_data.tensors[0].numpy(), x) and np.array_equal(train_data.tensors[1].numpy(), y)
    seed = derive_seed(0, 2, "partition-1")
    a, b = seeded_model(task, 0), models.initial_model(name, 0)
    task.train(a, train_data, TrainSettings(epochs=3, lr=0.05, batch_size=32, seed=seed))
    _todays_loop(b, x, y, epochs=3, lr=0.05, batch_size=32, seed=seed)
    for key, value in models.get_arrays(a).items():
        assert np.array_equal(value, models.get_arrays(b)[key]), key


def test_default_evaluate_uses_sklearn_metrics_and_adds_aucs_for_two_classes():
    task = builtin("breast-cancer")
    model = seeded_model(task, 0)
    test = task.server_test_data()
    out = task.evaluate(model, test)
    with torch.no_grad():
        logits = model(test.tensors[0])
    y, pred = test.tensors[1].numpy(), logits.argmax(1).numpy()
    prob = torch.softmax(logits.double(), 1)[:, 1].numpy()
    assert out["accuracy"] == metrics.accuracy_score(y, pred)
    assert out["f1_macro"] == pytest.approx(metrics.f1_score(y, pred, average="macro"))
    assert out["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, prob))
    assert out["pr_auc"] == pytest.approx(metrics.average_precision_score(y, prob))
    assert out["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, test.tensors[1])))
    digits = builtin("digits")
    assert set(digits.evaluate(seeded_model(digits, 0), digits.server_test_data())) == {"loss", "accuracy", "f1_macro"}
    one_class = tensor_dataset(test.tensors[0][:5].numpy(), np.zeros(5, np.int64))
    assert "roc_auc" not in task.evaluate(model, one_class)  # undefined with one class: left out, not NaN


def test_builtin_validation_shares_cover_the_global_test_split_exactly():
    task = builtin("digits")
    shares = [task.load_data(SiteInfo(str(i), i, 4, {}, 0))[1] for i in range(4)]
    x = torch.cat([s.tensors[0] for s in shares])
    assert torch.equal(x, task.server_test_data().tensors[0])


def test_centralized_reference_is_todays():
    ref = centralized_reference(builtin("breast-cancer"), epochs=6, lr=0.05, batch_size=32, seed=0)
    model = models.initial_model("breast-cancer", 0)
    split = data.load_split("breast-cancer")
    _todays_loop(model, split.x_train, split.y_train, epochs=6, lr=0.05, batch_size=32,
                 seed=derive_seed(0, "centralized"))
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(torch.from_numpy(split.x_test)), torch.from_numpy(split.y_test)))
    assert ref["loss"] == loss and ref["examples"] == len(split.y_test)


def test_a_user_task_needs_only_build_model_and_load_data(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\nfrom common.task import Task\n"
        "class Mine(Task):\n    name = 'mine'\n"
        "    def build_model(self):\n        return torch.nn.Linear(3, 2)\n"
        "    def load_data(self, site):\n        g = torch.Generator().manual_seed(site.partition_id)\n"
        "        x = torch.randn(40, 3, generator=g); y = (x[:, 0] > 0).long()\n"
        "        return TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:])\n")
    task = load_task(f"{path}:Mine")
    assert task.name == "mine" and task.server_test_data() is None
    model = seeded_model(task, 0)
    train, val = task.load_data(SiteInfo("0", 0, 2, {}, 0))
    assert task.train(model, train, TrainSettings(2, 0.1, 8, 1))["loss"] > 0
    assert {"accuracy", "loss", "f1_macro"} <= set(task.evaluate(model, val))
    assert torch.equal(seeded_model(task, 5).weight, seeded_model(task, 5).weight)  # seeded before build_model


@pytest.mark.parametrize("spec,message", [
    ("nope.py:X", "no such file nope.py"),
    ("json:loads", "loads is not a subclass of common.task.Task"),
    ("no_such_module_xyz:T", "no module 'no_such_module_xyz'"),
    ("garbage", "expected a built-in"),
    ("common.task:Task", "Task must define build_model()"),
])
def test_bad_task_specs_are_one_clear_line(spec, message):
    with pytest.raises(InputError) as info:
        load_task(spec)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_task_file_that_fails_to_import_is_one_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import torch\nraise RuntimeError('no GPU here\\nsecond line')\n")
    with pytest.raises(InputError, match=r"importing .*broken.py failed: RuntimeError: no GPU here; second line"):
        load_task(f"{path}:T")


# --- csv ----------------------------------------------------------------------------------------

FEATURES = ["age", "bmi", "glucose"]


def _site_csv(path, columns, rows, label="outcome"):
    rng = np.random.default_rng(0)
    lines = [",".join(columns + [label])]
    for i in range(rows):
        lines.append(",".join(f"{v:.3f}" for v in rng.normal(size=len(columns))) + f",{i % 2}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _csv_task(**extra):
    return CsvTask({"features": ",".join(FEATURES), "label-column": "outcome", "classes": 2, "hidden": "16,8",
                    **extra})


def test_csv_task_sizes_its_mlp_from_the_run_config():
    model = _csv_task().build_model()
    assert [m.weight.shape for m in model if isinstance(m, nn.Linear)] == [(16, 3), (8, 16), (2, 8)]


def test_csv_columns_are_checked_by_name_in_any_order(tmp_path):
    task = _csv_task()
    forward = _site_csv(tmp_path / "a.csv", FEATURES, 40)
    reverse = tmp_path / "b.csv"
    rows = [line.split(",") for line in forward.read_text().splitlines()]
    reverse.write_text("\n".join(",".join(r[2::-1] + [r[3]]) for r in rows) + "\n")
    a = task.load_data(SiteInfo("0", None, None, {"data-path": str(forward)}, 0))
    b = task.load_data(SiteInfo("0", None, None, {"data-path": str(reverse)}, 0))
    assert torch.equal(a[0].tensors[0], b[0].tensors[0])  # same columns, whatever the file's order
    assert len(a[0]) + len(a[1]) == 40 and len(a[1]) == 8
    wrong = _site_csv(tmp_path / "c.csv", ["age", "bmi", "insulin"], 40)
    with pytest.raises(InputError, match=r"missing: glucose; unexpected: insulin"):
        task.load_data(SiteInfo("0", None, None, {"data-path": str(wrong)}, 0))


def test_csv_site_with_too_few_rows_is_refused_and_one_class_is_warned(tmp_path):
    task = _csv_task()
    small = _site_csv(tmp_path / "s.csv", FEATURES, MIN_SITE_ROWS - 1)
    with pytest.raises(InputError, match=f"only {MIN_SITE_ROWS - 1} rows"):
        task.load_data(SiteInfo("0", None, None, {"data-path": str(small)}, 0))
    one = _site_csv(tmp_path / "o.csv", FEATURES, 30)
    one.write_text(one.read_text().replace(",1\n", ",0\n"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.load_data(SiteInfo("0", None, None, {"data-path": str(one)}, 0))
    assert any("every row has label 0" in str(w.message) for w in caught)


def test_csv_task_config_errors():
    with pytest.raises(InputError, match="needs run-config key 'features'"):
        CsvTask({})
    with pytest.raises(InputError, match="hidden must be layer sizes"):
        _csv_task(hidden="64,x")
    with pytest.raises(InputError, match="label-column 'age' is also listed"):
        _csv_task(**{"label-column": "age"})


def test_builtin_deployment_csv_needs_the_datasets_feature_names(tmp_path):
    x, y = data._load_raw("breast-cancer")
    names = data.feature_names("breast-cancer")
    good = tmp_path / "good.csv"
    data.write_csv(good, x[:60, ::-1], y[:60], "label", names[::-1])  # reversed: fine, by name
    train, val = builtin("breast-cancer").load_data(SiteInfo("0", None, None, {"data-path": str(good)}, 0))
    assert len(train) + len(val) == 60
    anonymous = tmp_path / "anon.csv"
    data.write_csv(anonymous, x[:60], y[:60])  # f0..f29: not breast-cancer's columns
    with pytest.raises(InputError, match="feature columns do not match"):
        builtin("breast-cancer").load_data(SiteInfo("0", None, None, {"data-path": str(anonymous)}, 0))


# --- fraud --------------------------------------------------------------------------------------


def test_fraud_is_synthetic_imbalanced_and_deterministic_from_the_seed():
    a, b, c = fraud_arrays(0), fraud_arrays(0), fraud_arrays(1)
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    share = np.concatenate([a.y_train, a.y_test]).mean()
    assert 0.01 <= share <= 0.02
    task = FraudTask({"seed": 0})
    out = task.evaluate(seeded_model(task, 0), task.server_test_data())
    assert {"pr_auc", "recall", "precision", "roc_auc", "accuracy"} <= set(out)
