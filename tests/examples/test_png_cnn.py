"""examples/png_cnn: the PNG class-folder task, in-process and in real simulations."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from common.learning.task_spec import load_task
from common.learning.tasks import seeded_model
from common.run import records
from common.task import SiteInfo, TrainSettings
from examples.png_cnn.make_data import write_sites
from examples.png_cnn.task import IMAGE_SIZE, PngFolder
from tests.simrun import Runs, simulate

SITES = 3


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    """Example site folders, and a task file pointing the example's tasks at them."""
    root = tmp_path_factory.mktemp("png")
    write_sites(root / "data", SITES, per_site=60)
    path = root / "my_task.py"
    path.write_text("from examples.png_cnn.task import PngCnnTask, PngGroupNormTask\n\n\n"
                    f"class Mine(PngCnnTask):\n    data_root = {str(root / 'data')!r}\n\n\n"
                    f"class MineGroupNorm(PngGroupNormTask):\n    data_root = {str(root / 'data')!r}\n")
    return path


def test_images_stream_from_class_folders_and_train(task_file):
    task = load_task(f"{task_file}:Mine")
    train, val = task.load_data(SiteInfo("0", 0, SITES, {}, 0))
    assert isinstance(train, PngFolder) and len(train) + len(val) == 60
    x, y = train[0]
    assert x.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and 0 <= float(x.min()) and float(x.max()) <= 1 and 0 <= y < 10
    model = seeded_model(task, 0)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert task.train(model, train, TrainSettings(2, 0.05, 16, 1))["loss"] > 0
    assert not torch.equal(before["0.weight"], model.state_dict()["0.weight"])
    assert int(model.state_dict()["1.num_batches_tracked"]) == 2 * -(-len(train) // 16)
    assert {"accuracy", "loss", "f1_macro"} <= set(task.evaluate(model, val))


def test_a_missing_site_folder_is_a_clear_error(task_file):
    with pytest.raises(FileNotFoundError, match="no image folder"):
        load_task(f"{task_file}:Mine").load_data(SiteInfo("7", 7, 8, {}, 0))


@pytest.fixture(scope="module")
def mode_runs(task_file, tmp_path_factory):
    """The example in every mode, 2 rounds: the three simulations started at once (each in its own
    processes); (Runs, their folder)."""
    root = tmp_path_factory.mktemp("png-runs")
    runs = Runs()
    try:
        for mode in ("he", "none", "masked"):  # the longest first
            runs.start(mode, simulate, "--task", f"{task_file}:Mine", "--clients", str(SITES), "--rounds", "2",
                       "--secure-mode", mode, "--seed", "0", "--no-report", out=root / mode)
        yield runs, root
    finally:
        runs.close()


@pytest.mark.parametrize("mode", ["none", "he", "masked"])
def test_example_runs_two_rounds_in_every_mode(mode_runs, mode):
    runs, root = mode_runs
    runs.get(mode)
    out = root / mode
    summary = json.loads((out / records.SUMMARY).read_text())
    assert summary["final_accuracy"] is None and summary["dataset"] == "png-cnn"
    rounds = summary["rounds"]
    assert [r["clients_used"] for r in rounds] == [SITES, SITES]
    assert rounds[-1]["federated_eval"]["examples"] == SITES * 12
    assert rounds[-1]["federated_eval"]["accuracy"] > rounds[0]["federated_eval"]["accuracy"]
