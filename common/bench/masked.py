"""The `masked` row of `fedseal bench secure` (Flower-free, in process; common/bench/workload.py
defines the workload and the row's keys).

Client (per site, best of `repeat`, the slowest site kept): the whole SecAgg+ site work of a
round - fresh key pairs, sealed advert, Shamir shares of seed and mask key encrypted for each
neighbour, decrypting the neighbours' shares, quantize + self mask + one pairwise mask per
neighbour (one fused pass), chunk seals. `client_mask_ns_per_param` is the quantize + mask pass
alone (the target: <= (1 + neighbours) ns/param), `quantize_ns_per_param` the same pass without
masks, `ns_per_mask_per_param` the difference per mask.
Server ingest (per site): the chunk-seal check and the running uint32 sum. Final: unmasking
(rebuild every survivor's seed from shares, check it, subtract its self mask), dequantization
and the float32 global model. round_s = one site's work + ingest of every site + final.
"""

from __future__ import annotations

import os

import numpy as np

from common.bench.workload import Workload, best, row
from common.secure import masking, secagg

RUN, ROUND = "bench", 1


def _site_keys(clients: int) -> dict[str, bytes]:
    return {str(i): secagg.round_key(bytes([i % 256]) * 32, RUN, ROUND, str(i)) for i in range(clients)}


def row_masked(w: Workload, repeat: int, workers: int = 1) -> dict:
    """The masked mode's row on a bench_secure.Workload (all sites take part, no dropout)."""
    ids = [str(i) for i in range(len(w.deltas))]
    keys = _site_keys(len(ids))
    counts = [int(n) for n in w.counts]

    def setup() -> tuple[dict, secagg.Roster, dict]:
        sites = {s: secagg.MaskedSite.start(s, RUN, ROUND) for s in ids}
        roster = secagg.Roster.build(RUN, ROUND, [sites[s].advertise(keys[s], counts[int(s)]) for s in ids])
        outs = {s: sites[s].share_keys(roster.to_bytes(), keys[s]) for s in ids}
        return sites, roster, outs

    sites, roster, outs = setup()
    inboxes = {s: {src: o.ciphertexts[s] for src, o in outs.items() if s in o.ciphertexts} for s in ids}
    states = {s: sites[s].to_state() for s in ids}
    roster_bytes = roster.to_bytes()

    def client(i: int) -> secagg.MaskedUpload:
        s = ids[i]
        site = secagg.MaskedSite.start(s, RUN, ROUND)  # its own key-setup work, timed
        site.advertise(keys[s], counts[i])
        del site
        restored = secagg.MaskedSite.from_state(states[s])  # the keys the roster holds
        restored.stage, restored.roster, restored.seed_shares, restored.key_shares = "setup", b"", {}, {}
        restored.share_keys(roster_bytes, keys[s])
        restored.receive_shares(inboxes[s])
        up = restored.mask(w.deltas[i], keys[s])
        return up

    client_s, uploads = 0.0, {}
    for i, s in enumerate(ids):  # time each site's work; keep uploads made with the roster's shares
        seconds, _ = best(repeat, lambda: client(i))
        client_s = max(client_s, seconds)
        site = secagg.MaskedSite.from_state(states[s])
        site.receive_shares(inboxes[s])
        uploads[s] = site.mask(w.deltas[i], keys[s])
        sites[s] = site

    site0 = sites[ids[0]]
    masks = [(masking.self_mask_key(os.urandom(32), roster.context, ids[0]), 1)]
    masks += [(masking.pair_mask_key(os.urandom(32), roster.context, ids[0], o), 1) for o in site0.partners()]
    mask_s, _ = best(repeat, lambda: masking.mask_update(w.deltas[0], roster.weight(ids[0]), roster.quantizer, masks))
    quant_s, _ = best(repeat, lambda: masking.mask_update(w.deltas[0], roster.weight(ids[0]), roster.quantizer, []))

    def ingest() -> np.ndarray:
        total = np.zeros(w.params, np.uint32)
        for s in ids:
            masking.check_chunks(uploads[s].vector, uploads[s].seal, keys[s])
            np.add(total, uploads[s].vector, out=total)
        return total

    server_s, _ = best(repeat, ingest)
    reveals = {s: sites[s].reveal(ids, [], keys[s]) for s in ids}

    def final() -> np.ndarray:
        seed_shares: dict[str, list[bytes]] = {}
        for s, (seeds, _, tag) in reveals.items():
            masking.check_message(tag, keys[s], secagg.REVEAL, *secagg.reveal_fields(roster.context, s, seeds, {}))
            for owner, share in seeds.items():
                seed_shares.setdefault(owner, []).append(share)
        result = secagg.unmask(roster, {s: u.vector for s, u in uploads.items()},
                               {s: u.partners for s, u in uploads.items()}, seed_shares, {},
                               {s: o.commitment for s, o in outs.items()}, [])
        return (w.base + result.mean).astype(np.float32)

    final_s, model = best(repeat, final)
    upload = (uploads[ids[0]].vector.nbytes + len(uploads[ids[0]].seal) + sum(map(len, outs[ids[0]].ciphertexts.values()))
              + 2 * 32 + 8 + 32 + 32 + sum(map(len, reveals[ids[0]][0].values())) + 32)
    out = row(w, upload, client_s, server_s, final_s, model.astype(np.float64) - w.base.astype(np.float64))
    out["client_mask_ns_per_param"] = mask_s / w.params * 1e9
    out["quantize_ns_per_param"] = quant_s / w.params * 1e9
    out["ns_per_mask_per_param"] = (mask_s - quant_s) / len(masks) / w.params * 1e9
    out["neighbours"] = len(site0.partners())
    return out
