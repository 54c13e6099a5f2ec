"""common/run/federated_eval.py: what the server keeps of a site's metrics, and how it combines them."""

from __future__ import annotations

import math

import pytest

from common.run import federated_eval as fe


def test_combine_weights_by_examples_and_averages_a_partial_metric_over_its_sites():
    per_site = {"a": {"accuracy": 1.0, "roc_auc": 0.5, "examples": 30},
                "b": {"accuracy": 0.5, "examples": 10}}
    out = fe.combine(per_site)
    assert out == {"accuracy": pytest.approx(0.875), "roc_auc": 0.5, "examples": 40}
    assert fe.combine({}) == {}


@pytest.mark.parametrize("examples", [0, -3, 2.5, True, None, "7"])
def test_a_report_without_a_positive_integer_example_count_is_dropped(examples):
    assert fe.clean({"accuracy": 0.9}, examples) is None


def test_clean_keeps_only_finite_numbers_under_short_names():
    out = fe.clean({"accuracy": 0.9, "nan": math.nan, "inf": math.inf, "flag": True, "x" * 65: 1.0,
                    "examples": 99}, 12)
    assert out == {"accuracy": 0.9, "examples": 12}  # a site cannot overwrite the example count either
    many = fe.clean({f"m{i:02d}": 1.0 for i in range(100)}, 5)
    assert len(many) == fe.MAX_METRICS + 1


def test_describe_is_one_line():
    line = fe.describe({"accuracy": 0.91, "loss": 0.2, "pr_auc": 0.5, "examples": 40}, 0.9, 0.3)
    assert line == "federated accuracy 0.9100 loss 0.2000 pr_auc 0.5000 (40 examples); server accuracy 0.9000 loss 0.3000"
    assert fe.describe({}) == "no evaluation"
