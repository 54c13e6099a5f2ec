"""Verify's three verdicts: intact, tampered, not watermarked under this key (and the threshold between)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.bench.watermark import tamper_blocks
from common.integrity import watermark as wm
from common.integrity.watermark import verdict
from tests.integrity.test_watermark import CTX, KEY, make_model


@pytest.fixture(scope="module")
def marked():
    return wm.embed(make_model(), KEY, CTX)


def test_threshold_keeps_a_false_tampered_verdict_below_2_pow_minus_40():
    for blocks in (1, 2, 18, 5_792, 5_793, 756_154, 756_155, 10**7, 10**9):
        t = verdict.threshold(blocks)
        assert 1 <= t <= blocks
        if t < blocks:
            assert verdict.false_verdict_bound(blocks, t) <= 2.0**-40
            if t > 1:  # and t is the smallest that does
                assert verdict.false_verdict_bound(blocks, t - 1) > 2.0**-40
    assert [verdict.threshold(n) for n in (18, 5_792, 5_793, 756_155)] == [2, 2, 3, 4]


def test_bound_is_the_binomial_tail_bound():
    n, t = 5_000, 2
    p = 2.0**-32
    exact_tail = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(t, 12))  # later terms < 1e-80
    assert exact_tail <= math.comb(n, t) * p**t <= verdict.false_verdict_bound(n, t)


def test_intact(marked):
    report = wm.verify(marked, KEY, CTX)
    assert report.intact and report.verdict == wm.INTACT and report.to_json()["verdict"] == "intact"


def test_tampered_even_when_most_blocks_fail(marked):
    for fraction in (0.05, 0.9):
        report = wm.verify(tamper_blocks(marked, fraction, np.random.default_rng(1)), KEY, CTX)
        assert report.verdict == wm.TAMPERED and not report.intact and report.tensors


def test_wrong_key_wrong_context_and_never_marked_are_not_watermarked(marked):
    for state, key, ctx in ((marked, bytes(32), CTX), (marked, KEY, "run-1/round-4"), (make_model(), KEY, CTX)):
        report = wm.verify(state, key, ctx)
        assert report.verdict == wm.NOT_WATERMARKED and not report.intact and not report.recoverable
        assert any("no watermark under this key and context" in p for p in report.problems)


def test_all_but_one_block_rewritten_is_still_this_keys_watermark_only_above_the_threshold(marked):
    total = wm.verify(marked, KEY, CTX).total_blocks
    assert verdict.verdict_of(total, total - 2, False) == wm.TAMPERED  # 2 tags hold: this key's mark
    assert verdict.verdict_of(total, total - 1, False) == wm.NOT_WATERMARKED  # 1 could be chance (2^-32 x n)
