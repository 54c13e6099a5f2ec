"""server.checks.check_sealed_reply on hand-built Flower replies: what reaches the aggregate
and what is rejected (with a reason, never an exception) - DESIGN.md §2.3 and §4 step 4."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from common import wire
from common.integrity.seal import seal_update
from common.integrity.watermark import strip
from common.learning.models import array_spec, get_arrays, initial_model
from server.checks import check_sealed_reply

pytestmark = pytest.mark.usefixtures("flower_task_identity")

RUN, ROUND = "run-checks", 4


@pytest.fixture(scope="module")
def model():
    return get_arrays(initial_model("breast-cancer", 0))


@pytest.fixture(scope="module")
def spec(model):
    return array_spec(model)


def sealed_by(fed, model, cid="1", rnd=ROUND, key=None):
    _, clients = fed
    return seal_update(model, key if key is not None else clients[cid].seal_key, RUN, rnd, cid)


def reply(arrays, client_id="1", num_examples=91, global_recovered=0, metrics=None, config=None, records=None):
    content = RecordDict({
        wire.ARRAYS: ArrayRecord({n: Array(np.require(a, requirements="C")) for n, a in arrays.items()}),
        wire.METRICS: MetricRecord(metrics if metrics is not None else
                                   {wire.NUM_EXAMPLES: num_examples, wire.TRAIN_LOSS: 0.1,
                                    wire.GLOBAL_RECOVERED: global_recovered}),
        wire.CONFIG: ConfigRecord(config if config is not None else {wire.CLIENT_ID: client_id}),
    })
    for name, rec in (records or {}).items():
        content[name] = rec
    return Message(content, dst_node_id=0, message_type=wire.TRAIN)


def check(fed, msg, spec, recover=False, rnd=ROUND):
    return check_sealed_reply(msg, spec, fed[0], RUN, rnd, recover=recover)


def bits_equal(a, b):
    return sorted(a) == sorted(b) and all(np.array_equal(a[n].view(np.uint32), b[n].view(np.uint32)) for n in a)


def flip(arrays, name, param, bit):
    out = {n: a.copy() for n, a in arrays.items()}
    out[name].reshape(-1).view(np.uint32)[param] ^= np.uint32(1 << bit)
    return out


def test_honest_sealed_reply_is_accepted_with_the_watermark_bits_cleared(fed, model, spec):
    sealed = sealed_by(fed, model)
    verdict = check(fed, reply(sealed), spec)
    assert verdict.accepted and verdict.reason == "" and verdict.site == "1"
    assert not verdict.refused and not verdict.update_recovered and not verdict.global_recovered
    assert verdict.tampered is None
    assert verdict.update.site == "1" and verdict.update.num_examples == 91
    assert bits_equal(verdict.update.arrays, strip(sealed))  # what training and aggregation use


def test_global_recovered_flag_is_passed_on(fed, model, spec):
    verdict = check(fed, reply(sealed_by(fed, model), global_recovered=1), spec)
    assert verdict.accepted and verdict.global_recovered


def _bad(model, fed):
    sealed = sealed_by(fed, model)
    first, w = "net.0.weight", sealed["net.0.weight"]
    return {
        "missing tensor": (reply({n: a for n, a in sealed.items() if n != first}), f"missing ['{first}']"),
        "extra tensor": (reply({**sealed, "extra": sealed["net.0.bias"]}), "unexpected ['extra']"),
        "renamed tensor": (reply({**{n: a for n, a in sealed.items() if n != first}, "net.0.W": w}),
                           f"missing ['{first}'], unexpected ['net.0.W']"),
        "wrong shape": (reply({**sealed, first: w.T.copy()}), f"array '{first}': got float32[30, 32]"),
        "wrong dtype": (reply({**sealed, first: w.astype(np.float64)}), f"array '{first}': got float64"),
        "NaN": (reply({**sealed, first: np.where(np.arange(w.size).reshape(w.shape) == 5, np.nan, w)
                       .astype(np.float32)}), "NaN or Inf"),
        "Inf": (reply({**sealed, "net.2.bias": np.array([np.inf, 0], np.float32)}), "NaN or Inf"),
        "unsealed weights": (reply(model), "seal check failed"),
        "missing num-examples": (reply(sealed, metrics={wire.TRAIN_LOSS: 0.1}), "num-examples must be a positive"),
        "zero num-examples": (reply(sealed, num_examples=0), "num-examples must be a positive"),
        "no metrics": (Message(RecordDict({wire.ARRAYS: ArrayRecord({n: Array(a) for n, a in sealed.items()}),
                                           wire.CONFIG: ConfigRecord({wire.CLIENT_ID: "1"})}),
                               dst_node_id=0, message_type=wire.TRAIN), "no MetricRecord"),
        "no arrays": (Message(RecordDict({wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 3}),
                                          wire.CONFIG: ConfigRecord({wire.CLIENT_ID: "1"})}),
                              dst_node_id=0, message_type=wire.TRAIN), "no ArrayRecord"),
        "unknown client id": (reply(seal_update(model, fed[1]["1"].seal_key, RUN, ROUND, "7"), client_id="7"),
                              "unknown site"),
        "no client id": (reply(sealed, config={}), "unknown site"),
        "another site's id": (reply(sealed, client_id="2"), "seal check failed"),
        "replayed from the previous round": (reply(sealed_by(fed, model, rnd=ROUND - 1)), "seal check failed"),
        "forged with a random key": (reply(sealed_by(fed, model, key=secrets.token_bytes(32))), "seal check failed"),
    }


CASES = ["missing tensor", "extra tensor", "renamed tensor", "wrong shape", "wrong dtype", "NaN", "Inf",
         "unsealed weights", "missing num-examples", "zero num-examples", "no metrics", "no arrays",
         "unknown client id", "no client id", "another site's id", "replayed from the previous round",
         "forged with a random key"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("recover", [False, True])
def test_malformed_or_unsealed_replies_are_rejected_without_raising(fed, model, spec, case, recover):
    msg, reason = _bad(model, fed)[case]
    verdict = check(fed, msg, spec, recover=recover)
    assert not verdict.accepted and verdict.update is None
    assert not verdict.refused and not verdict.update_recovered
    assert reason in verdict.reason, verdict.reason


def test_payload_far_larger_than_the_model_is_rejected(fed, model, spec):
    sealed = sealed_by(fed, model)
    msg = reply(sealed)
    w = msg.content[wire.ARRAYS]["net.0.weight"]
    # declares the right dtype and shape, but carries a megabyte
    msg.content[wire.ARRAYS]["net.0.weight"] = Array(dtype=w.dtype, shape=w.shape, stype=w.stype,
                                                     data=w.data + bytes(1 << 20))
    verdict = check(fed, msg, spec)
    assert not verdict.accepted and "far larger than the model" in verdict.reason


def test_garbled_bytes_and_error_replies_are_rejected(fed, model, spec):
    msg = reply(sealed_by(fed, model))
    w = msg.content[wire.ARRAYS]["net.0.bias"]
    msg.content[wire.ARRAYS]["net.0.bias"] = Array(dtype=w.dtype, shape=w.shape, stype=w.stype, data=b"junk")
    verdict = check(fed, msg, spec)
    assert not verdict.accepted and "cannot decode" in verdict.reason
    err = Message(Error(code=0, reason="site crashed"), reply_to=reply(sealed_by(fed, model)))
    verdict = check(fed, err, spec)
    assert not verdict.accepted and "site crashed" in verdict.reason and verdict.site.startswith("node-")


def test_refusal_of_the_global_model_is_reported_as_refused(fed, spec):
    msg = Message(RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: "2",
                                                         wire.REFUSED: "global model tampered beyond recovery"})}),
                  dst_node_id=0, message_type=wire.TRAIN)
    for recover in (False, True):
        verdict = check(fed, msg, spec, recover=recover)
        assert verdict.refused and not verdict.accepted
        assert verdict.site == "2" and verdict.reason == "global model tampered beyond recovery"


def test_tampered_reply_rejected_naming_tensor_and_block_or_recovered(fed, model, spec):
    """Two tampered blocks are rejected and named; one is restored bit-exactly. (This model has
    18 blocks: one tampered block was restored for 300 of 300 random keys, two for 179 of 200,
    so restoring two would fail about one run in ten.)"""
    sealed = sealed_by(fed, model)
    # one bit in block 3 of net.0.weight (parameters 192..255), one in block 0 of net.2.weight
    one = flip(sealed, "net.0.weight", 3 * 64 + 17, 23)
    tampered = flip(one, "net.2.weight", 5, 30)

    rejected = check(fed, reply(tampered), spec, recover=False)
    assert not rejected.accepted and "seal check failed" in rejected.reason
    assert rejected.tampered is not None
    assert 3 in rejected.tampered["net.0.weight"] and 0 in rejected.tampered["net.2.weight"]
    assert all(not blocks for name, blocks in rejected.tampered.items()
               if name not in ("net.0.weight", "net.2.weight"))

    restored = check(fed, reply(one), spec, recover=True)
    assert restored.accepted and restored.update_recovered
    assert restored.tampered is not None and 3 in restored.tampered["net.0.weight"]
    assert bits_equal(restored.update.arrays, strip(sealed))  # bit-exactly what the site sealed


def test_recover_mode_does_not_accept_a_replay_or_a_forgery(fed, model, spec):
    for arrays in (sealed_by(fed, model, rnd=ROUND - 1), sealed_by(fed, model, key=secrets.token_bytes(32))):
        verdict = check(fed, reply(arrays), spec, recover=True)
        assert not verdict.accepted and not verdict.update_recovered
        assert verdict.tampered and sum(map(len, verdict.tampered.values())) > 0


def test_sealed_reply_of_a_batchnorm_model_passes_its_fragile_check(fed):
    """0-dim tensors (an int64 counter, a float32 scale) and a bool buffer, as a site sends them
    (client/app.py: get_arrays, strip, seal_update, one Array per tensor)."""
    from tests.anymodels import batchnorm_mlp

    model = strip(get_arrays(batchnorm_mlp()))
    spec = array_spec(model)
    assert spec["net.1.num_batches_tracked"] == ((), "int64") and spec["scale"] == ((), "float32")
    verdict = check(fed, reply(sealed_by(fed, model)), spec)
    assert verdict.accepted, verdict.reason
    assert {n: (a.shape, str(a.dtype)) for n, a in verdict.update.arrays.items()} == spec
    assert bits_equal({n: a for n, a in verdict.update.arrays.items() if a.dtype == np.float32},
                      {n: a for n, a in model.items() if a.dtype == np.float32})
    assert verdict.update.arrays["net.1.num_batches_tracked"] == 0


def test_a_model_of_many_tiny_tensors_is_not_refused_as_oversized(fed):
    """60 BatchNorm layers of 8 channels: the .npy headers (128 bytes per tensor) outweigh the
    values, which the size check took for a payload far larger than the model."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), *[torch.nn.BatchNorm1d(8) for _ in range(60)])
    model = strip(get_arrays(net))
    spec = array_spec(model)
    verdict = check(fed, reply(sealed_by(fed, model)), spec)
    assert verdict.accepted, verdict.reason
