"""`fedseal bench secure`: every row measured on the same updates, with the figures users compare."""

from __future__ import annotations

import json

import pytest

from common.bench import secure as bench_secure
from common.cli import main

KEYS = {"wire_ratio", "client_ns_per_param", "server_ns_per_param", "round_s", "max_abs_error"}


def test_json_has_every_row_with_its_figures(capsys):
    assert main(["bench", "secure", "--params", "9000", "--clients", "3", "--repeat", "1", "--workers", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 9000 and result["clients"] == 3
    assert set(result["modes"]) == set(bench_secure.ROWS) >= {"none", "he", "tenseal_default"}
    for figures in result["modes"].values():
        assert KEYS <= set(figures) and all(figures[k] >= 0 for k in KEYS)
    he, default = result["modes"]["he"], result["modes"]["tenseal_default"]
    assert he["max_abs_error"] <= 1e-6
    assert he["wire_ratio"] < default["wire_ratio"] / 4


def test_he_upload_under_two_float32_at_model_scale():
    w = bench_secure.Workload.make(200_000, 2)
    figures = bench_secure.bench_he(w, repeat=1, workers=2)
    assert figures["wire_ratio"] <= 2.0
    assert figures["max_abs_error"] <= 1e-6


@pytest.mark.parametrize("args, message", [
    (["--modes", "nope"], "unknown mode"),
    (["--params", "10"], "--params"),
    (["--clients", "0"], "--clients"),
])
def test_bad_flags_exit_2(capsys, args, message):
    assert main(["bench", "secure", *args]) == 2
    assert message in capsys.readouterr().err
