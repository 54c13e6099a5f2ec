"""RunSettings validation, run-config parity with pyproject.toml, and CLI input errors (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from common.cli import main
from common.errors import InputError
from common.learning.data import write_csv
from common.run.settings import RUN_CONFIG_KEYS, RunSettings

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_run_config_matches_settings_defaults():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert config["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    assert config["config"] == RunSettings().to_run_config()
    assert set(config["config"]) == set(RUN_CONFIG_KEYS)


def test_run_config_round_trip():
    s = RunSettings(dataset="digits", num_rounds=3, partition="dirichlet:0.3", seed=9, out_dir="/x")
    assert RunSettings.from_run_config(s.to_run_config()) == s
    assert RunSettings.from_run_config({"lr": 1}).lr == 1.0  # TOML may give an int


@pytest.mark.parametrize("config,msg", [
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"num-rounds": 0}, "num-rounds must be an integer >= 1"),
    ({"local-epochs": 1.5}, "local-epochs must be an integer"),
    ({"lr": -1.0}, "lr must be a number > 0"),
    ({"batch-size": 0}, "batch-size"),
    ({"partition": "dirichlet:-1"}, "ALPHA"),
    ({"secure-mode": "fhe"}, "unknown secure-mode 'fhe'"),
    ({"min-clients": 0}, "min-clients"),
    ({"rounds": 3}, "unknown run-config key\\(s\\): rounds"),
])
def test_settings_validation(config, msg):
    with pytest.raises(InputError, match=msg):
        RunSettings.from_run_config(config)


def _run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args,msg", [
    (["--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["--clients", "1"], "--clients must be at least 2, got 1"),
    (["--clients", "500"], "--clients 500 is more than the 456 training examples of breast-cancer"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--partition", "shards"], "unknown partition 'shards'"),
    (["--lr", "0"], "lr must be a number > 0"),
    (["--clients", "3", "--min-clients", "4"], "--min-clients 4 is more than --clients 3"),
    (["--clients", "5", "--clients-per-round", "6"], "clients-per-round 6 is more than the 5 sites"),
    (["--clients", "5", "--clients-per-round", "2", "--min-clients", "3"],
     "min-clients 3 is more than clients-per-round 2"),
])
def test_simulate_bad_flags_exit_2_with_one_line(args, msg, capsys, tmp_path):
    try:
        code, out, err = _run_cli(["simulate", "--out", str(tmp_path / "run"), *args], capsys)
    except SystemExit as exc:  # argparse choices: exit 2 with one error line, no usage
        code, err = exc.code, capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and msg in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_simulate_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("keep me")
    code, out, err = _run_cli(["simulate", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"fedseal: error: --out {tmp_path}: folder exists and is not empty "
                                        f"(use --force to reuse it)"]
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_check_data(tmp_path, capsys):
    import numpy as np

    from common.learning.data import feature_names

    names = feature_names("breast-cancer")
    labels = np.array([0, 1, 0, 1, 1, 1] * 2)
    good = tmp_path / "good.csv"
    write_csv(good, np.random.default_rng(0).normal(size=(12, 30)), labels, "diagnosis", names)
    code, out, _ = _run_cli(["check-data", str(good), "--label-column", "diagnosis"], capsys)
    assert code == 0 and "12 rows, 30 features, class counts [4, 8]" in out
    reverse = tmp_path / "reverse.csv"  # the same columns in reverse order: checked by name, fine
    write_csv(reverse, np.random.default_rng(0).normal(size=(12, 30)), labels, "diagnosis", names[::-1])
    assert _run_cli(["check-data", str(reverse), "--label-column", "diagnosis"], capsys)[0] == 0

    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text().replace(good.read_text().splitlines()[2].split(",")[1], "n/a", 1))
    anonymous = tmp_path / "anonymous.csv"
    write_csv(anonymous, np.zeros((12, 30)), labels, "diagnosis")
    small = tmp_path / "small.csv"
    write_csv(small, np.zeros((4, 30)), labels[:4], "diagnosis", names)
    for args, msg in [
        ([str(tmp_path / "missing.csv")], "missing.csv: no such file"),
        ([str(good), "--label-column", "label"], "no label column 'label'"),
        ([str(bad), "--label-column", "diagnosis"], f"line 3, column '{names[1]}': 'n/a' is not a finite number"),
        ([str(anonymous), "--label-column", "diagnosis"], "the feature columns do not match the task's 30 features"),
        ([str(small), "--label-column", "diagnosis"], "only 4 rows; a site needs at least 10"),
        ([str(good), "--task", "csv"], "--task csv needs --features"),
    ]:
        code, out, err = _run_cli(["check-data", *args], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and msg in err, err

    one_class = tmp_path / "one.csv"
    write_csv(one_class, np.random.default_rng(1).normal(size=(12, 3)), np.zeros(12, int), "y", ["a", "b", "c"])
    code, out, err = _run_cli(["check-data", str(one_class), "--task", "csv", "--features", "c,a,b",
                               "--label-column", "y"], capsys)
    assert code == 0 and "12 rows, 3 features, class counts [12, 0]" in out
    assert err.strip().splitlines() == [f"fedseal: warning: {one_class}: every row has label 0: a site with one "
                                        "class of 2 cannot teach the model the others (check label-column)"]


def test_real_process_exit_status_and_no_traceback(tmp_path):
    """Through the console entry point in a fresh interpreter, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "common.cli", "simulate", "--rounds", "0"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["fedseal: error: --rounds must be at least 1, got 0"]


def test_simulate_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--dataset", "--clients", "--rounds", "--partition", "--seed", "--local-epochs", "--lr",
                 "--batch-size", "--min-clients", "--secure-mode", "--out", "--force", "--verbose"):
        assert flag in out


@pytest.mark.parametrize("changes, message", [
    (dict(aggregator="median"), "use fedavg"),
    (dict(on_tamper="recover"), "can only be rejected"),
    (dict(dp="client:1.0,1.0"), "dp sample"),
])
def test_secure_modes_refuse_what_needs_each_update(changes, message):
    from common.run.settings import SECURE_MODES

    for mode in SECURE_MODES:
        if mode == "none":
            continue
        with pytest.raises(InputError, match=message):
            RunSettings(secure_mode=mode, **changes)


def test_round_timeout_must_be_positive():
    with pytest.raises(InputError, match="round-timeout"):
        RunSettings(round_timeout=0)


def test_cohort_must_fit_the_federation_and_hold_min_clients():
    assert RunSettings(clients=10, clients_per_round=4, min_clients=4).clients_per_round == 4
    with pytest.raises(InputError, match="clients-per-round 11 is more than the 10 sites"):
        RunSettings(clients=10, clients_per_round=11)
    with pytest.raises(InputError, match="min-clients 5 is more than clients-per-round 4"):
        RunSettings(clients=10, clients_per_round=4, min_clients=5)
    with pytest.raises(InputError, match="clients-per-round must be an integer >= 0"):
        RunSettings(clients_per_round=-1)
