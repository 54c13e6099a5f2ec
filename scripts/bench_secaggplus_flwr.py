"""The `secaggplus_flwr` baseline row of `fedseal bench secure`: Flower's unmodified SecAgg+
computation (flwr 1.41), on the same workload as the other rows. A script, not a library: it imports
Flower, which common/ never does, so `common/bench/secure.py` runs it in a child process and reads
the row it prints as JSON.

Usage: python scripts/bench_secaggplus_flwr.py --params N --clients K [--repeat R]

What is timed is what `secaggplus_mod` and `SecAggPlusWorkflow` compute, called through Flower's
own functions with the workflow's defaults (clipping range 8, 2^22 quantization levels, modulus
2^32) and max_weight = the largest example count (so no site overflows):
- client: key pairs, Shamir shares of seed and sk1 (`create_shares`), Fernet-encrypted shares,
  weights x (n / max_weight) quantized stochastically (`quantize`, `factor_combine`), self mask and
  pairwise masks from `pseudo_rand_gen` (MT19937 seeded by the 32-bit fold), mod 2^32, and
  serialization as int64 (`ndarray_to_bytes`, what crosses the wire);
- server ingest: `bytes_to_ndarray` and `parameters_addition` per site, then `parameters_mod`;
- final: `combine_shares` of every seed, self masks subtracted, `factor_extract`, `dequantize`,
  offset and ratio as in `unmask_stage` (its float64 result is what Flower returns).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt, generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen, share_keys_plaintext_concat
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder
from common.bench.workload import Workload, best, row  # noqa: E402

CLIPPING_RANGE = 8.0  # SecAggPlusWorkflow defaults (flwr 1.41)
QUANTIZATION_RANGE = 4194304
MODULUS_RANGE = 4294967296


def row_secaggplus_flwr(w: Workload, repeat: int) -> dict:
    """Flower's SecAgg+ on a Workload (all sites, all pairs as neighbours, threshold
    a majority): the row's keys as bench_secure.row, plus its mask ns/param."""
    k = len(w.deltas)
    threshold = max(2, k // 2 + 1)
    max_weight = float(max(w.counts))
    pairs = [generate_key_pairs() for _ in range(k)]
    sk1 = [private_key_to_bytes(sk) for sk, _ in pairs]
    pk1 = [public_key_to_bytes(pk) for _, pk in pairs]
    enc = [generate_key_pairs() for _ in range(k)]
    seeds = [os.urandom(32) for _ in range(k)]
    weights = [w.base + d for d in w.deltas]  # Flower's SecAgg+ sums the trained weights

    def masking(i: int) -> list[np.ndarray]:
        ratio = float(w.counts[i]) / max_weight
        q_ratio = round(ratio * QUANTIZATION_RANGE)
        params = parameters_multiply([weights[i]], q_ratio / QUANTIZATION_RANGE)
        quantized = factor_combine(q_ratio, quantize(params, CLIPPING_RANGE, QUANTIZATION_RANGE))
        shapes = get_parameters_shape(quantized)  # the factor travels as one more array
        quantized = parameters_addition(quantized, pseudo_rand_gen(seeds[i], MODULUS_RANGE, shapes))
        for j in range(k):
            if j == i:
                continue
            shared = generate_shared_key(bytes_to_private_key(sk1[i]), bytes_to_public_key(pk1[j]))
            pair = pseudo_rand_gen(shared, MODULUS_RANGE, shapes)
            quantized = (parameters_addition if i > j else parameters_subtraction)(quantized, pair)
        return parameters_mod(quantized, MODULUS_RANGE)

    def client(i: int) -> list[bytes]:
        b_shares = create_shares(seeds[i], threshold, k)
        sk_shares = create_shares(sk1[i], threshold, k)
        for j in range(k):
            if j != i:
                key = generate_shared_key(enc[i][0], enc[j][1])
                encrypt(key, share_keys_plaintext_concat(i, j, b_shares[j], sk_shares[j]))
        return [ndarray_to_bytes(a) for a in masking(i)]

    client_s, uploads = 0.0, []
    for i in range(k):
        seconds, up = best(repeat, lambda: client(i))
        client_s, uploads = max(client_s, seconds), uploads + [up]
    mask_s, _ = best(repeat, lambda: masking(0))

    def ingest() -> list[np.ndarray]:
        total = None
        for up in uploads:
            vec = [bytes_to_ndarray(b) for b in up]
            total = vec if total is None else parameters_addition(total, vec)
        return parameters_mod(total, MODULUS_RANGE)

    server_s, summed = best(repeat, ingest)
    seed_shares = [create_shares(s, threshold, k) for s in seeds]

    def final() -> np.ndarray:
        vec = summed
        for i in range(k):
            secret = combine_shares(seed_shares[i][:threshold])
            vec = parameters_subtraction(vec, pseudo_rand_gen(secret, MODULUS_RANGE, get_parameters_shape(vec)))
        vec = parameters_mod(vec, MODULUS_RANGE)
        q_total_ratio, vec = factor_extract(vec)
        out = dequantize(vec, CLIPPING_RANGE, QUANTIZATION_RANGE)[0]
        out += -(k - 1) * CLIPPING_RANGE
        out *= QUANTIZATION_RANGE / q_total_ratio
        return out

    final_s, mean_weights = best(repeat, final)
    upload = sum(map(len, uploads[0]))
    out = row(w, upload, client_s, server_s, final_s, mean_weights - w.base.astype(np.float64))
    out["client_mask_ns_per_param"] = mask_s / w.params * 1e9
    out["neighbours"] = k - 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Flower's SecAgg+ row of `fedseal bench secure`, as JSON.")
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(row_secaggplus_flwr(Workload.make(args.params, args.clients), args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
