"""Differential privacy: the `dp` setting, the epsilon ledger against Opacus' accountant, DP-SGD,
the budget refusal, client-level clipping and noise, and one short `--dp sample` simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

from common import wire
from common.cli import main
from common.errors import InputError
from common.learning import dp
from common.learning.data import load_partition, load_split
from common.learning.models import get_arrays, initial_model, set_arrays
from common.learning.tasks import builtin
from common.learning.training import evaluate, tensor_dataset
from common.run import records
from common.run.records import RoundRecord
from common.run.settings import RunSettings
from server import checks as server_checks
from server import dp as server_dp
from server.aggregation import Update
from tests.simrun import simulate

# --- the setting --------------------------------------------------------------------------------


def test_parse_valid_specs():
    assert dp.parse_dp("") is None and dp.parse_dp("  ") is None
    assert dp.parse_dp("sample:3,1e-5") == dp.DpSpec("sample", 3.0, 1e-5, None, dp.DEFAULT_SAMPLE_CLIP)
    assert dp.parse_dp("sample:8, 1e-6, 0.5") == dp.DpSpec("sample", 8.0, 1e-6, None, 0.5)
    assert dp.parse_dp("client:1.0,0.5") == dp.DpSpec("client", None, dp.DEFAULT_CLIENT_DELTA, 1.0, 0.5)
    assert dp.parse_dp("client:2,1,1e-3") == dp.DpSpec("client", None, 1e-3, 2.0, 1.0)
    spec = RunSettings(dp="sample:3,1e-5")
    assert spec.dp_spec.epsilon == 3.0 and RunSettings.from_run_config(spec.to_run_config()) == spec


@pytest.mark.parametrize("spec,msg", [
    ("sample:0,1e-5", "epsilon must be > 0, got 0"),
    ("sample:-1,1e-5", "epsilon must be > 0, got -1"),
    ("sample:3,1", "delta must be > 0 and < 1, got 1"),
    ("sample:3,2", "delta must be > 0 and < 1, got 2"),
    ("sample:3,0", "delta must be > 0 and < 1, got 0"),
    ("sample:3,1e-5,0", "clipping norm must be > 0"),
    ("sample:3", "expected sample:EPS,DELTA[,CLIP]"),
    ("sample:inf,1e-5", "finite number"),
    ("sample:three,1e-5", "'three' is not a number"),
    ("client:0,1", "noise multiplier must be > 0"),
    ("client:1,-1", "clipping norm must be > 0"),
    ("client:1,1,1.5", "delta must be > 0 and < 1"),
    ("laplace:1,1", "expected sample:EPS,DELTA[,CLIP] or client:NOISE,CLIP[,DELTA]"),
    ("3,1e-5", "expected sample:EPS,DELTA[,CLIP] or client:NOISE,CLIP[,DELTA]"),
])
def test_bad_values_raise_input_error_naming_the_problem(spec, msg):
    with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        dp.parse_dp(spec)
    with pytest.raises(InputError):
        RunSettings(dp=spec)


def test_client_level_needs_fedavg():
    with pytest.raises(InputError, match="needs aggregator fedavg"):
        RunSettings(dp="client:1,1", aggregator="median")
    RunSettings(dp="sample:3,1e-5", aggregator="median")  # DP-SGD output is post-processed freely


def test_simulate_flag_bad_value_is_one_line_exit_2(capsys, tmp_path):
    code = main(["simulate", "--dp", "sample:3,1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        "fedseal: error: dp 'sample:3,1': delta must be > 0 and < 1, got 1"]
    assert not (tmp_path / "run").exists()  # refused before anything was started or written


def test_models_are_opacus_compatible_and_an_incompatible_layer_is_refused():
    dp.check_task(builtin("breast-cancer"))
    dp.check_task(builtin("digits"))
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
                          nn.LSTM(3, 3))
    with pytest.raises(InputError) as err:
        dp.check_module(model, "custom")
    text = str(err.value)
    assert "\n" not in text and len(text) <= 300
    assert "the custom model" in text and "BatchNorm1d '1'" in text and "BatchNorm2d '2.1'" in text
    assert "LSTM '3'" in text and "use opacus.layers.DPLSTM" in text
    assert "instead of BatchNorm1d, BatchNorm2d use GroupNorm" in text


@pytest.fixture()
def batchnorm_registered():
    """tests/anymodels.py's BatchNorm model as the breast-cancer model of this process."""
    from common.learning import models
    from tests.anymodels import BatchNormMLP

    saved = dict(models._REGISTERED)
    models.register_model("breast-cancer", BatchNormMLP)
    yield
    models._REGISTERED.clear()
    models._REGISTERED.update(saved)


def test_dp_sample_refuses_a_batchnorm_model_at_start_in_one_line(batchnorm_registered, capsys, tmp_path):
    """The check `fedseal simulate` and the ServerApp make before round 1 (check_task) sees the
    model the run builds (check_task); the run is refused before anything starts."""
    with pytest.raises(InputError, match="BatchNorm1d 'net.1'.*use GroupNorm"):
        dp.check_task(builtin("breast-cancer"))
    capsys.readouterr()
    code = main(["simulate", "--clients", "2", "--rounds", "1", "--dp", "sample:3,1e-5", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "BatchNorm1d 'net.1'" in err[0] and "GroupNorm" in err[0]
    assert not (tmp_path / "run").exists()


# --- accounting ---------------------------------------------------------------------------------


def _opacus_epsilon(noise, sample_rate, steps, delta):
    """What Opacus' own RDP accountant says after `steps` optimizer steps."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=sample_rate)
    return accountant.get_epsilon(delta=delta)


def test_reported_epsilon_equals_opacus_accountant_for_the_same_steps():
    spec = dp.parse_dp("sample:3,1e-5")
    plan = dp.site_plan(spec, 91, rounds=5, local_epochs=5, batch_size=32)
    assert plan.sample_rate == pytest.approx(1 / 3) and plan.steps_per_round == 15 and plan.total_steps == 75
    assert plan.noise == get_noise_multiplier(target_epsilon=3, target_delta=1e-5, sample_rate=1 / 3, steps=75,
                                              accountant="rdp")
    for r in (1, 3, 5):
        assert plan.epsilon_after(r, 1e-5) == pytest.approx(_opacus_epsilon(plan.noise, 1 / 3, 15 * r, 1e-5),
                                                             rel=1e-12)
    assert 2.9 < plan.epsilon_after(5, 1e-5) <= 3  # calibrated to reach, never exceed, the budget
    assert plan.epsilon_after(0, 1e-5) == 0.0


def test_budget_spent_refusal_reason_and_server_audit_event(flower_task_identity):
    from client.app import refuse

    spec = dp.parse_dp("sample:3,1e-5")
    plan = dp.site_plan(spec, 91, rounds=2, local_epochs=1, batch_size=32)
    assert dp.budget_spent(spec, plan, 1) == "" and dp.budget_spent(spec, plan, 2) == ""
    reason = dp.budget_spent(spec, plan, 3)  # a third round would go past the budget
    assert reason.startswith("DP budget spent: training in round 3 would raise this site's epsilon")
    assert "over the budget of 3" in reason
    request = Message(RecordDict({}), dst_node_id=0, message_type=wire.TRAIN)
    reply = refuse(request, "4", reason, **{wire.DP_BUDGET_SPENT: 1, wire.DP_EPSILON: plan.epsilon_after(2, 1e-5)})
    assert server_checks.refusal_event(reply) == "dp_budget_spent"
    assert server_dp.reported_epsilon(reply) == pytest.approx(plan.epsilon_after(2, 1e-5))
    plain = refuse(request, "4", "global model tampered beyond recovery")
    assert server_checks.refusal_event(plain) == "global_refused" and server_dp.reported_epsilon(plain) is None


# --- DP-SGD -------------------------------------------------------------------------------------


def test_dp_sgd_is_deterministic_takes_the_planned_steps_and_learns():
    torch.set_num_threads(1)
    spec = dp.parse_dp("sample:8,1e-5")
    x, y = load_partition("breast-cancer", 0, 3, "iid", 0)
    plan = dp.site_plan(spec, len(y), rounds=1, local_epochs=3, batch_size=32)
    models = []
    for _ in range(2):
        model = initial_model("breast-cancer", 0)
        dp.train_private(model, tensor_dataset(x, y), plan=plan, clip=spec.clip, epochs=3, lr=0.05, batch_size=32, seed=7)
        models.append(get_arrays(model))
        assert not hasattr(model, "_module") and not any(hasattr(p, "grad_sample") and p.grad_sample is not None
                                                         for p in model.parameters())
    for name in models[0]:
        np.testing.assert_array_equal(models[0][name], models[1][name])
    split = load_split("breast-cancer")
    model = initial_model("breast-cancer", 0)
    set_arrays(model, models[0])
    assert evaluate(model, tensor_dataset(split.x_test, split.y_test))["accuracy"] > 0.8


# --- client-level -------------------------------------------------------------------------------


def _arrays(value):
    return {"w": np.full((3, 4), value, dtype=np.float32), "b": np.full(2, value, dtype=np.float32)}


@pytest.mark.parametrize("scale", [0.001, 1.0, 30.0])
def test_clip_update_is_flowers_arithmetic_bit_for_bit(scale):
    from flwr.supercore.differential_privacy import compute_clip_model_update

    rng = np.random.default_rng(7)
    base = {"w": rng.normal(size=(5, 7)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    trained = {n: (a + scale * rng.normal(size=a.shape)).astype(np.float32) for n, a in base.items()}
    params = [trained[n].astype(np.float64) for n in trained]
    compute_clip_model_update(params, [base[n].astype(np.float64) for n in trained], 0.5)
    ours = dp.clip_update(trained, base, 0.5)
    for name, theirs in zip(trained, params):
        np.testing.assert_array_equal(ours[name], theirs.astype(np.float32))


def test_client_clipping_leaves_integer_buffers_out_of_the_norm_and_unchanged():
    base = {**_arrays(1.0), "bn.num_batches_tracked": np.array(0, dtype=np.int64)}
    trained = {**_arrays(1.0 + 0.1 / math.sqrt(14)), "bn.num_batches_tracked": np.array(500, dtype=np.int64)}
    clipped = dp.clip_update(trained, base, 0.5)  # the float update has norm 0.1: within the bound
    assert list(clipped) == list(trained) and clipped["bn.num_batches_tracked"].dtype == np.int64
    assert clipped["bn.num_batches_tracked"] == 500
    np.testing.assert_allclose(clipped["w"], trained["w"], rtol=0, atol=1e-7)


def test_server_noise_covers_the_updates_tensors_only():
    """none mode hands noisy_mean the averaged (floating) tensors; the base, the published model,
    also holds the integer buffers, which get no noise and are not part of the result."""
    base = {**_arrays(1.0), "bn.num_batches_tracked": np.array(3, dtype=np.int64)}
    spec = dp.parse_dp("client:1.0,0.5")
    out = server_dp.noisy_mean(base, [Update("0", _arrays(1.1), 1), Update("1", _arrays(0.9), 1)], spec,
                               np.random.default_rng(0))
    assert sorted(out) == ["b", "w"] and out["w"].dtype == np.float32


def test_client_update_clipping_and_server_noise():
    base = _arrays(1.0)
    far = _arrays(4.0)  # update of norm 3 x sqrt(14)
    clipped = dp.clip_update(far, base, 0.5)
    norm = math.sqrt(sum(float(np.sum((clipped[n].astype(np.float64) - base[n]) ** 2)) for n in base))
    assert norm == pytest.approx(0.5, rel=1e-6)
    near = _arrays(1.001)  # already within the bound: unchanged
    np.testing.assert_allclose(dp.clip_update(near, base, 0.5)["w"], near["w"], rtol=0, atol=1e-7)

    # The server clips again (a site that skipped clipping cannot raise the sensitivity) and
    # adds noise of std NOISE x CLIP / n to the unweighted mean.
    spec = dp.parse_dp("client:1e-9,0.5")
    updates = [Update("0", far, 1), Update("1", base, 1000)]
    out = server_dp.noisy_mean(base, updates, spec, np.random.default_rng(0))
    np.testing.assert_allclose(out["w"], base["w"] + (clipped["w"] - base["w"]) / 2, atol=1e-6)
    spec = dp.parse_dp("client:2,0.5")
    big = {"w": np.zeros((200, 200), dtype=np.float32)}
    out = server_dp.noisy_mean(big, [Update(str(i), big, 1) for i in range(4)], spec, np.random.default_rng(1))
    assert float(np.std(out["w"])) == pytest.approx(2 * 0.5 / 4, rel=0.02)


def test_client_level_epsilon_ledger_uses_the_accountant_with_sample_rate_one():
    spec = dp.parse_dp("client:1.2,1.0")
    rounds = [RoundRecord(r, 0.9, 0.1, 1.0, 0, 0, 2, epsilon=server_dp.round_epsilon(spec, r, {}, ["1", "0"]))
              for r in (1, 2, 3)]
    expected = _opacus_epsilon(1.2, 1.0, 3, 1e-5)
    assert rounds[-1].epsilon == {"0": pytest.approx(expected), "1": pytest.approx(expected)}
    fields = server_dp.summary_fields(spec, rounds)
    assert fields["dp_unit"] == "site" and fields["epsilon_max"] == pytest.approx(expected)
    assert fields["epsilon_all_rounds"] == pytest.approx(expected) and fields["noise_multiplier"] == 1.2
    # old rounds.jsonl lines without `epsilon` still load
    old = {k: v for k, v in rounds[0].to_json().items() if k not in ("epsilon", "stages")}
    assert RoundRecord(**old).epsilon == {}


# --- end to end ---------------------------------------------------------------------------------


def test_simulation_with_sample_level_dp_reports_epsilon_within_budget(tmp_path):
    out = tmp_path / "run"
    proc = simulate("--dataset", "breast-cancer", "--clients", "3", "--rounds", "2", "--local-epochs", "3",
                    "--dp", "sample:3,1e-5", "--no-report", out=out)
    summary = json.loads((out / records.SUMMARY).read_text())
    assert summary["dp"] == "sample:3,1e-05,1" and summary["dp_unit"] == "example"
    assert set(summary["epsilon"]) == {"0", "1", "2"}
    assert 2.9 < summary["epsilon_max"] <= 3.0
    assert summary["final_accuracy"] > 0.85  # chance is about 0.63 (majority class)
    for site, eps in summary["epsilon"].items():
        n = len(load_partition("breast-cancer", int(site), 3, "iid", 0)[1])
        batches = math.ceil(n / 32)
        noise = get_noise_multiplier(target_epsilon=3, target_delta=1e-5, sample_rate=1 / batches,
                                     steps=2 * 3 * batches, accountant="rdp")
        assert eps == pytest.approx(_opacus_epsilon(noise, 1 / batches, 2 * 3 * batches, 1e-5), rel=1e-9)
    rounds = records.read_jsonl(out / records.ROUNDS)
    assert [max(r["epsilon"].values()) < summary["epsilon_max"] for r in rounds] == [True, False]
    assert "epsilon max" in proc.stdout and "differential privacy sample:3,1e-05,1" in proc.stdout


def test_client_epsilon_accounts_for_cohort_sampling():
    """With cohorts of K of N sites, a site is in a round with probability K/N: the accountant is
    stepped at that sample rate (Opacus' RDPAccountant, one step per round)."""
    spec = dp.parse_dp("client:1.0,1.0")
    accountant = RDPAccountant()
    for _ in range(10):
        accountant.step(noise_multiplier=1.0, sample_rate=0.1)
    assert dp.client_epsilon(spec, 10, 0.1) == pytest.approx(accountant.get_epsilon(delta=spec.delta))
    assert dp.client_epsilon(spec, 10, 0.1) < dp.client_epsilon(spec, 10) / 4  # 3.44 against 19.05
