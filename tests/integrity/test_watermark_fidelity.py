"""The watermark is imperceptible on FedSeal's own models: accuracy and predictions keep."""

from __future__ import annotations

import pytest
import torch

from common.integrity import watermark as wm
from common.learning.data import load_split
from common.learning.models import get_arrays, initial_model, set_arrays
from common.learning.training import tensor_dataset, train


@pytest.mark.parametrize("dataset", ["breast-cancer", "digits"])
def test_watermark_keeps_accuracy_and_predictions(dataset):
    split = load_split(dataset)
    model = initial_model(dataset, seed=0)
    train(model, tensor_dataset(split.x_train, split.y_train), epochs=5, lr=0.05, batch_size=32, seed=0)
    x = torch.from_numpy(split.x_test)
    with torch.no_grad():
        before = model(x).argmax(dim=1).numpy()
        arrays = get_arrays(model)
        marked = wm.embed(arrays, bytes(32), "fidelity")
        set_arrays(model, marked)
        after = model(x).argmax(dim=1).numpy()
    accuracy_change = abs((before == split.y_test).mean() - (after == split.y_test).mean())
    assert accuracy_change <= 0.0005  # 0.05 points
    assert (before == after).mean() >= 0.999
    assert wm.verify(marked, bytes(32), "fidelity").intact
