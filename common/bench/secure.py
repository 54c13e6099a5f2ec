"""`fedseal bench secure`: what each secure mode costs per round, against the TenSEAL default,
all measured in one run on the same updates (Flower-free: the protocol's computations in process).

Per mode: `wire_ratio` (one site's upload bytes / the float32 bytes of the model),
`client_ns_per_param` (a site's encode + encrypt/mask + seal + serialize, wall time),
`server_ns_per_param` (ingest: check + deserialize + add, per site and parameter),
`round_s` (the critical path of a round: one site's work, as sites run in parallel, then the
server's ingest of every site and the final decryption/unmasking), `max_abs_error` (the
aggregate against plaintext FedAvg computed in float64). Timings are the best of `repeat`.
Modes: none (sealed float32 weights), he (common/secure/he.py), tenseal_default (CKKS N=8192
[60,40,40], scale 2^40, ts.ckks_vector: the common default), and any registered in ROWS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.bench import masked
from common.bench.workload import Workload, best, row
from common.errors import FedSealError, InputError
from common.integrity.seal import check_chunks, open_update, seal_chunks, seal_update
from common.secure import he

RUN = "bench"
FLOWER_BASELINE = Path(__file__).resolve().parents[2] / "scripts" / "bench_secaggplus_flwr.py"
SEAL_KEY = bytes(range(32))


def bench_none(w: Workload, repeat: int, workers: int) -> dict:
    """Sites seal their float32 weights (watermark); the server checks each seal and averages."""
    arrays = [{"w": w.base + d} for d in w.deltas]
    spec = {"w": ((w.params,), "float32")}
    client_s, sealed = float("inf"), []
    for i, a in enumerate(arrays):
        s, out = best(repeat, lambda: seal_update(a, SEAL_KEY, RUN, 1, str(i)))
        client_s, sealed = min(client_s, s), sealed + [out]

    def ingest():
        total = np.zeros(w.params, np.float64)
        for i, (s, n) in enumerate(zip(sealed, w.counts)):
            total += open_update(s, spec, SEAL_KEY, RUN, 1, str(i)).values()["w"].astype(np.float64) * n
        return total

    server_s, total = best(repeat, ingest)
    mean = total / w.counts.sum() - w.base.astype(np.float64)
    return row(w, 4 * w.params, client_s, server_s, 0.0, mean)


def bench_he(w: Workload, repeat: int, workers: int) -> dict:
    """common/secure/he.py as FedSeal's he mode runs it: encrypt n x delta, seal chunks; check, add;
    blind, one site decrypts, the server unblinds."""
    secret, public = he.make_keys()
    he.encrypt(w.deltas[0][:he.PARALLEL_MIN_CHUNKS * he.CHUNK], 1.0, secret, workers=workers)  # start workers

    def client(i: int) -> tuple[list[bytes], list[bytes]]:
        chunks = he.encrypt(w.deltas[i], float(w.counts[i]), secret, workers=workers)
        return chunks, seal_chunks(chunks, SEAL_KEY, RUN, 1, str(i), "he")

    client_s, uploads = float("inf"), []
    for i in range(len(w.deltas)):
        s, up = best(repeat, lambda: client(i))
        client_s, uploads = min(client_s, s), uploads + [up]
    count = he.n_chunks(w.params)

    def ingest() -> he.Sum:
        total = he.Sum(public, count)
        for i, (chunks, tags) in enumerate(uploads):
            check_chunks(chunks, tags, SEAL_KEY, RUN, 1, str(i), "he")
            total.add_site(chunks)
        return total

    server_s, total = best(repeat, ingest)

    def final() -> np.ndarray:
        blinded, mask = total.blinded()
        return he.unblind(he.decrypt_raw(blinded, secret, workers=workers), mask, public, w.params)

    final_s, summed = best(1, final)
    upload = sum(map(len, uploads[0][0])) + sum(map(len, uploads[0][1]))
    return row(w, upload, client_s, server_s, final_s, summed / w.counts.sum())


def bench_tenseal_default(w: Workload, repeat: int, workers: int) -> dict:
    """TenSEAL's common default: CKKS N=8192 [60,40,40], scale 2^40, one ts.ckks_vector per 4096."""
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2**40
    server_ctx = ts.context_from(ctx.serialize(save_secret_key=False))
    slots = 4096

    def client(i: int) -> list[bytes]:
        x = w.deltas[i].astype(np.float64) * float(w.counts[i])
        return [ts.ckks_vector(ctx, x[j:j + slots]).serialize() for j in range(0, w.params, slots)]

    client_s, uploads = float("inf"), []
    for i in range(len(w.deltas)):
        s, up = best(repeat, lambda: client(i))
        client_s, uploads = min(client_s, s), uploads + [up]

    def ingest():
        acc = [ts.ckks_vector_from(server_ctx, b) for b in uploads[0]]
        for site in uploads[1:]:
            for a, b in zip(acc, site):
                a += ts.ckks_vector_from(server_ctx, b)
        return [a.serialize() for a in acc]

    server_s, summed = best(repeat, ingest)
    final_s, total = best(1, lambda: np.concatenate([ts.ckks_vector_from(ctx, b).decrypt() for b in summed]))
    return row(w, sum(map(len, uploads[0])), client_s, server_s, final_s, total[:w.params] / w.counts.sum())


def bench_secaggplus_flwr(w: Workload, repeat: int, workers: int) -> dict:
    """Flower's unmodified SecAgg+ (scripts/bench_secaggplus_flwr.py, run in a child process because it
    imports Flower) on the same workload, made again there from the same seed."""
    if not FLOWER_BASELINE.is_file():
        raise InputError(f"the secaggplus_flwr row needs the repository's {FLOWER_BASELINE.name} "
                         f"(not found at {FLOWER_BASELINE})")
    cmd = [sys.executable, str(FLOWER_BASELINE), "--params", str(w.params), "--clients", str(len(w.deltas)),
           "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FedSealError(f"Flower's SecAgg+ baseline failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# mode name -> bench function(workload, repeat, workers) -> row
ROWS: dict[str, Callable[[Workload, int, int], dict]] = {
    "none": bench_none,
    "he": bench_he,
    "tenseal_default": bench_tenseal_default,
    "masked": masked.row_masked,  # SecAgg+ stages, AES-CTR masks, uint32, chunk seals
    "secaggplus_flwr": bench_secaggplus_flwr,
}


def run(params: int, clients: int, *, repeat: int = 2, workers: int = 1, modes: list[str] | None = None) -> dict:
    """Every mode's row on one workload: {"params", "clients", "workers", "modes": {mode: row}}."""
    w = Workload.make(params, clients)
    chosen = modes or list(ROWS)
    return {"params": params, "clients": clients, "workers": workers, "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "modes": {name: ROWS[name](w, repeat, workers) for name in chosen}}
