#!/usr/bin/env python3
"""Where a site's `he` time goes: SEAL's own steps, one core, in ns per parameter.

Times, on FedSeal's HE parameters (N = 4096, one prime, two reals per slot), the CKKS encoder,
`Encryptor.encrypt_zero_symmetric` (SEAL's noise and PRNG alone), `encrypt_symmetric` and
`encrypt_symmetric` + SEAL's compressed save, each the best of `--repeat` passes over `--chunks`
ciphertexts. These are the floor under `fedseal bench secure`'s client figure: no FedSeal code
runs between the SEAL calls. Pin it to one core to read per-core costs:

    taskset -c 1 .venv/bin/python scripts/bench_seal_parts.py [--chunks 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tenseal.sealapi as sealapi  # noqa: E402

from common.secure import he  # noqa: E402
from common.secure.he_serial import save, scratch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=64, help="ciphertexts per pass, 4,096 values each (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="passes; the best is reported (default 3)")
    args = parser.parse_args()
    if args.chunks < 1 or args.repeat < 1:
        parser.error("--chunks and --repeat must be >= 1")

    ctx = he._secret(he.make_keys()[0])
    rows = [(np.random.default_rng(i).normal(0, 1, he.SLOTS) * (1 + 1j)).tolist() for i in range(args.chunks)]
    plain = sealapi.Plaintext()
    ctx.encoder.encode(rows[0], ctx.scale, plain)

    def encode() -> None:
        for row in rows:
            ctx.encoder.encode(row, ctx.scale, plain)

    def encrypt_zero() -> None:
        for _ in rows:
            ctx.encryptor.encrypt_zero_symmetric()

    def encrypt() -> None:
        for _ in rows:
            ctx.encryptor.encrypt_symmetric(plain)

    def encrypt_and_save() -> None:
        with scratch() as path:
            for _ in rows:
                save(ctx.encryptor.encrypt_symmetric(plain), path)

    values = args.chunks * he.CHUNK
    print(f"SEAL steps, ns per parameter (N={he.POLY_MODULUS_DEGREE}, {he.PRIME_BITS}-bit prime, "
          f"{args.chunks} ciphertexts, best of {args.repeat}, load average {os.getloadavg()[0]:.2f}, "
          f"CPUs allowed {len(os.sched_getaffinity(0))})")
    for name, step in [("CKKS encode", encode), ("encrypt_zero_symmetric", encrypt_zero),
                       ("encrypt_symmetric", encrypt), ("encrypt_symmetric + save", encrypt_and_save)]:
        best = min(_seconds(step) for _ in range(args.repeat))
        print(f"  {name:<26} {best / values * 1e9:7.1f}")
    return 0


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
