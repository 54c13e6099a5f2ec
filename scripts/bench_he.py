#!/usr/bin/env python3
"""What additive HE aggregation costs: common/he.py (SEAL via tenseal.sealapi: seeded, complex
packing, one 50-bit prime, N=4096) against TenSEAL's common default (CKKS N=8192 [60,40,40],
scale 2^40, ts.ckks_vector), both measured in this run on the same updates.

Figures per scheme: wire_ratio (upload bytes / float32 bytes), client_ns_per_param
(encode+encrypt+serialize), server_ns_per_param (deserialize+add, per site and parameter) and
max_abs_error of the decrypted weighted mean against float64. Each timing is the best of --repeat.

Usage: .venv/bin/python scripts/bench_he.py [--params 1000000] [--sites 3] [--repeat 2]
                                            [--workers 1] [--no-baseline] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import he  # noqa: E402


def best(repeat, fn):
    """(best seconds, last result) of `repeat` calls."""
    seconds, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        seconds = min(seconds, time.perf_counter() - t)
    return seconds, out


def _encrypt_part(args):
    part, weight, secret = args
    return he.encrypt(part, weight, secret)


def bench_fedseal(updates, counts, repeat, workers):
    secret, public = he.make_keys()
    he.assert_no_secret(public)
    params = updates[0].size
    pool = ProcessPoolExecutor(workers) if workers > 1 else None

    def encrypt(u, n):
        if pool is None:
            return he.encrypt(u, n, secret)
        # Split at chunk boundaries: the concatenated lists equal one encrypt() of the whole vector.
        per = -(-he.n_chunks(u.size) // workers) * he.CHUNK
        parts = [(u[i:i + per], n, secret) for i in range(0, u.size, per)]
        return [c for chunk_list in pool.map(_encrypt_part, parts) for c in chunk_list]

    try:
        if pool is not None:
            list(pool.map(_encrypt_part, [(updates[0][:4], 1.0, secret)] * workers))  # warm up
        client_s, uploads = float("inf"), []
        for u, n in zip(updates, counts):
            s, up = best(repeat, lambda: encrypt(u, float(n)))
            client_s = min(client_s, s)
            uploads.append(up)
    finally:
        if pool is not None:
            pool.shutdown()
    server_s, summed = best(repeat, lambda: he.add(uploads, public))
    mean = he.decrypt(summed, secret, params) / counts.sum()
    return {
        "upload_bytes": sum(map(len, uploads[0])),
        "client_ns_per_param": client_s / params * 1e9,
        "server_ns_per_param": server_s / (params * len(uploads)) * 1e9,
        "mean": mean,
    }


def bench_tenseal(updates, counts, repeat):
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2**40
    server_ctx = ts.context_from(ctx.serialize(save_secret_key=False))
    slots = 4096
    params = updates[0].size

    def encrypt(u, n):
        w = u.astype(np.float64) * n
        return [ts.ckks_vector(ctx, w[i:i + slots]).serialize() for i in range(0, params, slots)]

    client_s, uploads = float("inf"), []
    for u, n in zip(updates, counts):
        s, up = best(repeat, lambda: encrypt(u, float(n)))
        client_s = min(client_s, s)
        uploads.append(up)

    def add():
        acc = [ts.ckks_vector_from(server_ctx, b) for b in uploads[0]]
        for site in uploads[1:]:
            for a, b in zip(acc, site):
                a += ts.ckks_vector_from(server_ctx, b)
        return [a.serialize() for a in acc]

    server_s, summed = best(repeat, add)
    mean = np.concatenate([np.array(ts.ckks_vector_from(ctx, b).decrypt()) for b in summed])
    return {
        "upload_bytes": sum(map(len, uploads[0])),
        "client_ns_per_param": client_s / params * 1e9,
        "server_ns_per_param": server_s / (params * len(uploads)) * 1e9,
        "mean": mean[:params] / counts.sum(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="client processes over chunks")
    parser.add_argument("--no-baseline", action="store_true", help="skip TenSEAL's default")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.02, args.params).astype(np.float32) for _ in range(args.sites)]
    counts = rng.integers(10, 2000, size=args.sites)
    exact = sum(u.astype(np.float64) * n for u, n in zip(updates, counts)) / counts.sum()
    float32_bytes = 4 * args.params

    runs = {"fedseal": bench_fedseal(updates, counts, args.repeat, args.workers)}
    if not args.no_baseline:
        runs["tenseal_default"] = bench_tenseal(updates, counts, args.repeat)
    result = {"params": args.params, "sites": args.sites, "workers": args.workers,
              "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]}
    for name, r in runs.items():
        result[name] = {
            "wire_ratio": r["upload_bytes"] / float32_bytes,
            "upload_bytes": r["upload_bytes"],
            "client_ns_per_param": r["client_ns_per_param"],
            "server_ns_per_param": r["server_ns_per_param"],
            "max_abs_error": float(np.max(np.abs(r["mean"] - exact))),
        }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"HE aggregation: {args.params:,} parameters, {args.sites} sites, client workers "
          f"{args.workers}, load average {result['load_avg_1min']:.2f} on {result['cpus']} CPUs")
    print(f"  {'scheme':<16} {'wire_ratio':>10} {'client ns/p':>12} {'server ns/p':>12} {'max_abs_error':>14}")
    for name in runs:
        r = result[name]
        print(f"  {name:<16} {r['wire_ratio']:>9.2f}x {r['client_ns_per_param']:>12.1f} "
              f"{r['server_ns_per_param']:>12.1f} {r['max_abs_error']:>14.2e}")
    print("  targets          <= 2.00x        <= 80.0        <= 40.0          <= 1e-6")
    return 0


if __name__ == "__main__":
    sys.exit(main())
