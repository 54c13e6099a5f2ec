"""A decrypting site's side of he mode (client/modes/he.py): it decrypts a blinded sum only when
the sum holds at least min-clients distinct sites, so the server cannot have one site's update
decrypted by asking for a sum of one, or of one site counted twice."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client.modes.he import decrypt_blinded
from common import wire
from common.secure import he


def _request(summed: he.Summed) -> RecordDict:
    return RecordDict({wire.HE_SUM: ArrayRecord({wire.C0: Array(summed.c0)}),
                       wire.HE_CIPHERTEXTS: ConfigRecord({wire.SEEDS: summed.seeds})})


@pytest.fixture(scope="module")
def sums(fed):
    """(the 3 sites' blinded sum, one site's blinded ciphertext, a sum counting one site twice)."""
    secret, public = fed[1]["0"].he_secret_context(), fed[0].he_public_context()
    chunks = [he.encrypt(np.full(10, float(i)), 1.0, secret) for i in range(3)]
    three, one = he.Sum(public, 1), he.Sum(public, 1)
    for c in chunks:
        three.add_site(c)
    one.add_site(chunks[0])
    single = one.total()
    twice = he.combine([single, single], public)
    return three.blinded()[0], one.blinded()[0], twice


def test_a_sum_of_min_clients_sites_is_decrypted(fed, sums):
    three, _, _ = sums
    raw = decrypt_blinded(_request(three), fed[1]["1"], min_sites=3)
    assert np.array_equal(raw, he.decrypt_raw(three, fed[1]["1"].he_secret_context()))


def test_a_sum_of_fewer_than_min_clients_sites_is_refused(fed, sums):
    _, one, _ = sums
    with pytest.raises(he.HEError, match="refused to decrypt a sum of 1 distinct sites in 1 seed records"):
        decrypt_blinded(_request(one), fed[1]["1"], min_sites=2)


def test_a_site_counted_twice_is_refused(fed, sums):
    _, _, twice = sums
    with pytest.raises(he.HEError, match="1 distinct sites in 2 seed records"):
        decrypt_blinded(_request(twice), fed[1]["1"], min_sites=2)
