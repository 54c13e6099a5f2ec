"""secure-mode he: the server's check of each encrypted reply (hand-built replies), and whole
simulated federations (accuracy equals `none`, every injection caught, rotation of the decryptor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from common import wire
from common.integrity.seal import seal_chunks
from common.integrity.watermark import strip
from common.learning.models import array_spec, flatten, get_arrays, initial_model
from common.run import records
from common.secure import he
from server.aggregation import Update, fedavg
from server.modes.he import check_he_reply
from server.rounds import RoundContext
from tests.simrun import simulate

RUN, ROUND = "run-he", 2


@pytest.fixture(scope="module")
def ctx(fed):
    spec = array_spec(get_arrays(initial_model("breast-cancer", 0)))
    return RoundContext(grid=None, node_ids=[], settings=None, keys=fed[0], spec=spec, run_name=RUN,
                        server_round=ROUND, published={}, base={}, record=None, config={}, recorder=None, clock=None)


def count_of(ctx):
    return he.n_chunks(sum(int(np.prod(s)) for s, _ in ctx.spec.values()))


def upload(fed, ctx, cid="1", secret=None, rnd=ROUND):
    client = fed[1][cid]
    vector = flatten(get_arrays(initial_model("breast-cancer", 1)), ctx.spec) * 0.01
    chunks = he.encrypt(vector, 50.0, secret or client.he_secret_context())
    return chunks, seal_chunks(chunks, client.seal_key, RUN, rnd, cid, "he")


def reply(chunks, tags, cid="1", n=50):
    return Message(RecordDict({
        wire.HE_CIPHERTEXTS: ConfigRecord({wire.CHUNKS: chunks}),
        wire.SEALS: ConfigRecord({wire.TAGS: tags}),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: n}),
        wire.CONFIG: ConfigRecord({wire.CLIENT_ID: cid}),
    }), dst_node_id=0, message_type=wire.TRAIN)


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def test_sealed_ciphertexts_are_accepted_and_add_up(fed, ctx):
    chunks, tags = upload(fed, ctx)
    verdict, got = check_he_reply(reply(chunks, tags), ctx, count_of(ctx), "1")
    assert verdict.reason == "" and got is not None and got.num_examples == 50
    total = he.Sum(fed[0].he_public_context(), count_of(ctx))
    total.add_site(got.chunks)
    assert total.sites == 1


@pytest.mark.parametrize("damage, reason", [
    ("flip", "1 of 1 chunks fail|every chunk fails"),
    ("other-site", "every chunk fails"),
    ("old-round", "every chunk fails"),
    ("missing-tags", "no list of seal tags"),
    ("count", "ciphertexts, expected"),
    ("huge", "impossible size"),
    ("no-examples", "num-examples"),
    ("unknown-site", "unknown site"),
])
def test_bad_replies_are_rejected_with_a_reason(fed, ctx, damage, reason):
    chunks, tags = upload(fed, ctx, rnd=ROUND - 1 if damage == "old-round" else ROUND)
    cid, n = "1", 50
    if damage == "flip":
        chunks = [chunks[0][:100] + bytes([chunks[0][100] ^ 4]) + chunks[0][101:], *chunks[1:]]
    elif damage == "other-site":
        cid = "2"
    elif damage == "missing-tags":
        tags = "no"
    elif damage == "count":
        chunks, tags = chunks + chunks, tags + tags
    elif damage == "huge":
        chunks = [chunks[0] * 10]
    elif damage == "no-examples":
        n = 0
    elif damage == "unknown-site":
        cid = "9"
    verdict, got = check_he_reply(reply(chunks, tags, cid=cid, n=n), ctx, count_of(ctx), cid)
    assert got is None and not verdict.accepted
    assert __import__("re").search(reason, verdict.reason), verdict.reason


def test_ciphertext_of_other_parameters_passes_its_seal_but_not_the_sum(fed, ctx):
    """A site sealing ciphertexts made under another key/parameters is left out of the sum; the
    sum of the others is unchanged."""
    foreign_secret, _ = he.make_keys(scale_bits=32)
    chunks, tags = upload(fed, ctx, secret=foreign_secret)
    verdict, got = check_he_reply(reply(chunks, tags), ctx, count_of(ctx), "1")
    assert got is not None  # the seal is the site's own
    total = he.Sum(fed[0].he_public_context(), count_of(ctx))
    with pytest.raises(he.HEError, match="scale"):
        total.add_site(got.chunks, "site 1")
    assert total.sites == 0


def test_he_aggregate_equals_fedavg_below_the_watermark_bits(fed):
    """What the he round computes (base + decrypted sum / total examples, rounded to float32) equals
    none mode's FedAvg once the watermark bits are cleared, but for the rare value that CKKS noise
    (~1e-12 on the mean) pushes across a rounding boundary: 0 or 1 of these 41k values (8 seeds).
    The former 50-bit prime at scale 2^30 gave 20-30."""
    rng = np.random.default_rng(7)
    secret, public = fed[1]["0"].he_secret_context(), fed[0].he_public_context()
    base = strip({"w": rng.normal(0, 0.1, 10 * he.CHUNK).astype(np.float32)})["w"]
    sites = [Update(str(i), strip({"w": base + rng.normal(0, 0.02, base.size).astype(np.float32)}),
                    int(rng.integers(250, 300))) for i in range(5)]
    total = he.Sum(public, he.n_chunks(base.size))
    for u in sites:
        total.add_site(he.encrypt(u.arrays["w"].astype(np.float64) - base, float(u.num_examples), secret))
    mean_update = he.decrypt(total.total(), secret, base.size) / sum(u.num_examples for u in sites)
    got = strip({"w": (base.astype(np.float64) + mean_update).astype(np.float32)})["w"]
    expected = strip(fedavg(sites))["w"]
    assert np.count_nonzero(got != expected) <= 5


# --- whole federations ----------------------------------------------------------------------------

INJECT = ["tamper-update:0:2", "replay-update:1:3", "forge-update:2:2", "tamper-global:3:2", "corrupt-global:4:3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("he-runs")
    common_args = ["--clients", "5", "--rounds", "3", "--quiet", "--no-report"]
    simulate(*common_args, out=base / "none")
    simulate(*common_args, "--secure-mode", "he", out=base / "he")
    simulate(*common_args, "--secure-mode", "he", *[a for i in INJECT for a in ("--inject", i)], out=base / "inject")
    return base


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_he_accuracy_equals_none_with_the_same_seed(runs):
    none, he_run = summary(runs / "none"), summary(runs / "he")
    assert he_run["secure_mode"] == "he"
    for a, b in zip(none["rounds"], he_run["rounds"]):
        assert abs(a["accuracy"] - b["accuracy"]) <= 0.001
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_he_sum_is_decrypted_by_a_rotating_site(runs):
    audit = records.read_jsonl(runs / "he" / records.AUDIT)
    decrypted = [e for e in audit if e["event"] == "sum_decrypted"]
    assert [e["round"] for e in decrypted] == [1, 1, 2, 2, 3, 3]  # two sites decrypt each sum, rotating
    assert [e["client"] for e in decrypted] == ["0", "1", "1", "2", "2", "3"]
    assert all(e["sites"] == 5 for e in decrypted)
    rounds = summary(runs / "he")["rounds"]
    assert all("decrypt" in r["stages"] and "encrypt" in r["stages"] for r in rounds)


def test_every_injection_is_caught_in_he_mode(runs):
    audit = records.read_jsonl(runs / "inject" / records.AUDIT)
    rejected = {(e["round"], e["client"]) for e in audit if e["event"] == "update_rejected"}
    assert rejected == {(2, "0"), (2, "2"), (3, "1")}
    assert {(e["round"], e["client"]) for e in audit if e["event"] == "global_recovered"} == {(2, "3")}
    assert {(e["round"], e["client"]) for e in audit if e["event"] == "global_refused"} == {(3, "4")}
    rounds = summary(runs / "inject")["rounds"]
    assert [r["clients_used"] for r in rounds] == [5, 3, 3]
    # The rejected sites' ciphertexts are not in the sum: the decryptor saw only accepted sites.
    assert [e["sites"] for e in audit if e["event"] == "sum_decrypted"] == [5, 5, 3, 3, 3, 3]


def test_the_he_context_must_hold_a_whole_cohort(tmp_path):
    """A simulation sizes its HE context for the cohort (300 sites: 300); a context too small for
    the cohort stops the run before round 1 instead of rejecting every site past its limit."""
    from common.errors import InputError
    from common.integrity.keys import ServerKeys, init_federation, write_he_contexts
    from server.modes.he import check_he_context

    init_federation(tmp_path / "big", 3, he_context_writer=lambda s, c: write_he_contexts(s, c, max_sites=300))
    public = ServerKeys.load(tmp_path / "big" / "server").he_public_context()
    assert he.max_sites(public) == 300
    check_he_context(public, 300)
    with pytest.raises(InputError, match="sums at most 300 sites, a round's cohort holds 301"):
        check_he_context(public, 301)
    assert he.max_sites(he.make_keys()[1]) == he.MAX_SITES == 128  # `fedseal keys init`: 128
