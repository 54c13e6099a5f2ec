"""End to end: a model of over 1M parameters with BatchNorm (an int64 0-dim counter, float
running statistics), a 0-dim parameter and a bool buffer (tests/anymodels.py wide_model), 3 sites,
2 rounds, in each mode, through FedSeal's own apps (tests/anymodel_apps.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.integrity import watermark
from common.integrity.keys import load_secret
from common.learning.models import array_spec, averaged_spec, get_arrays, param_count
from common.run import records
from common.run.modelio import load_state
from tests.anymodels import WIDE_HIDDEN, wide_model
from tests.simrun import Runs, simulate_model

MODES = ("none", "he", "masked")
TEST_EXAMPLES = 114  # breast-cancer's global test split


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("any-model")
    runs = Runs()
    try:
        for mode in ("masked", "he", "none"):  # the longest first; each in its own processes
            runs.start(mode, simulate_model, "--secure-mode", mode, "--clients", "3", "--rounds", "2", out=root / mode)
        for mode in MODES:
            runs.get(mode)
        yield {mode: root / mode for mode in MODES}
    finally:
        runs.close()


def _summary(folder: Path) -> dict:
    return json.loads((folder / records.SUMMARY).read_text())


def test_the_model_has_over_a_million_parameters_and_every_kind_of_tensor():
    spec = array_spec(get_arrays(wide_model()))
    assert sum(p.numel() for p in wide_model().parameters()) > 1_000_000
    assert spec["net.1.num_batches_tracked"] == ((), "int64") and spec["scale"] == ((), "float32")
    assert spec["enabled"] == ((3,), "bool") and spec["net.3.weight"] == ((WIDE_HIDDEN, WIDE_HIDDEN), "float32")


@pytest.mark.parametrize("mode", MODES)
def test_every_site_is_used_in_every_round_and_nothing_is_rejected(runs, mode):
    summary = _summary(runs[mode])
    assert summary["secure_mode"] == mode and [r["round"] for r in summary["rounds"]] == [1, 2]
    for r in summary["rounds"]:
        assert r["clients_used"] == 3 and r["rejected"] == [] and r["recovered"] == []
    events = {a["event"] for a in records.read_jsonl(runs[mode] / records.AUDIT)}
    assert events <= {"site_enrolled", "sum_decrypted"}, events  # each site proves its id once; he decrypts
    assert summary["final_accuracy"] > 0.9  # chance is about 0.63


@pytest.mark.parametrize("mode", ["he", "masked"])
def test_secure_modes_reach_the_accuracy_of_none_within_one_test_example(runs, mode):
    plain, secure = _summary(runs["none"])["rounds"], _summary(runs[mode])["rounds"]
    for a, b in zip(plain, secure, strict=True):
        assert abs(a["accuracy"] - b["accuracy"]) <= 1 / TEST_EXAMPLES + 1e-9
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_final_model_keeps_every_dtype_and_shape_its_buffers_and_its_watermark(runs, mode):
    model, metadata = load_state(runs[mode] / records.MODEL)
    initial = get_arrays(wide_model())
    assert array_spec(model) == array_spec(initial)  # 0-dim tensors are still 0-dim, int64 still int64
    assert model["net.1.num_batches_tracked"] == 0  # not averaged: the global model keeps its own value
    assert np.array_equal(model["enabled"], initial["enabled"])
    key = load_secret(runs[mode] / "keys" / "server" / "watermark.key")
    report = watermark.verify(model, key, metadata[records.CONTEXT_KEY], manifest=metadata[watermark.MANIFEST_KEY])
    assert report.intact, report.problems


@pytest.mark.parametrize("mode", MODES)
def test_bytes_per_round_match_what_each_mode_sends(runs, mode):
    values = param_count(averaged_spec(array_spec(get_arrays(wide_model()))))
    for r in _summary(runs[mode])["rounds"]:
        per_site_down = r["bytes_down"] / 3
        assert per_site_down >= 4 * values  # the published float32 model to every site
        if mode == "none":
            assert 4 * values <= r["bytes_up"] / 3 < 4.2 * values  # sealed float32 weights
        elif mode == "masked":
            assert 4 * values <= r["bytes_up"] / 3 < 4.2 * values  # uint32 masked vector + seals and shares
        else:
            # seeded CKKS ciphertexts (~1.7x float32), plus the decrypted sum's coefficients that each of
            # the two cross-checking decryptors returns (uint64 per coefficient, ~4x float32 each)
            assert 4 * values < r["bytes_up"] / 3 < 16 * values
