#!/usr/bin/env python3
"""What the integrity layer of `none` mode costs per round: watermark + sign the global model,
verify it at each site, seal each reply, check every seal at the server.

Runs the same federated rounds twice in one process (10 digits sites by default, real local
training, FedAvg), once plain and once with every integrity step, and prints the round times
and their ratio. Flower's messaging is left out of both, so the ratio is an upper bound of
what the steps add to a real simulated round.

Usage: .venv/bin/python scripts/bench_integrity.py [--sites 10] [--rounds 3] [--dataset digits] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.integrity.keys import ClientKeys, ServerKeys, client_dir, init_federation, server_dir  # noqa: E402
from common.integrity.seal import open_update, publish_global, receive_global, seal_update  # noqa: E402
from common.learning.data import load_partition  # noqa: E402
from common.learning.models import array_spec, get_arrays, initial_model, set_arrays  # noqa: E402
from common.learning.training import derive_seed, train  # noqa: E402
from common.run.settings import RunSettings  # noqa: E402
from server.aggregation import Update, fedavg  # noqa: E402


class Stopwatch:
    """Accumulates seconds per named step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def time(self, step: str, fn, *args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - t
        return out


def one_round(settings, sites, global_arrays, server_round, keys, clients, watch):
    """One round; with `keys` None, the plain round (no watermark, signature or seals)."""
    model = initial_model(settings.dataset, settings.seed)
    run = "bench"
    spec = array_spec(global_arrays)
    if keys is not None:
        published, signature = watch.time("server: watermark + sign", publish_global, global_arrays,
                                          keys.watermark_key, keys.signing_key, run, server_round)
    updates = []
    for cid, (x, y) in enumerate(sites):
        start = global_arrays
        if keys is not None:
            ck = clients[cid]
            opened = watch.time("sites: verify global", receive_global, published, signature, ck.watermark_key,
                                ck.server_public_key, run, server_round, expected=spec)
            start = opened.values()
        set_arrays(model, start)
        watch.time("sites: train", train, model, x, y, epochs=settings.local_epochs, lr=settings.lr,
                   batch_size=settings.batch_size, seed=derive_seed(settings.seed, server_round, cid))
        trained = get_arrays(model)
        if keys is not None:
            sealed = watch.time("sites: seal", seal_update, trained, ck.seal_key, run, server_round, str(cid))
            opened = watch.time("server: check seals", open_update, sealed, spec, keys.seal_key(str(cid)),
                                run, server_round, str(cid))
            trained = opened.values()
        updates.append(Update(str(cid), trained, len(y)))
    return watch.time("server: aggregate", fedavg, updates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = RunSettings(dataset=args.dataset)
    sites = [load_partition(settings.dataset, i, args.sites, "iid", settings.seed) for i in range(args.sites)]
    with tempfile.TemporaryDirectory() as tmp:
        init_federation(Path(tmp) / "keys", args.sites)
        keys = ServerKeys.load(server_dir(Path(tmp) / "keys"))
        clients = [ClientKeys.load(client_dir(Path(tmp) / "keys", str(i)), str(i)) for i in range(args.sites)]
        plain_g = secure_g = get_arrays(initial_model(settings.dataset, settings.seed))
        one_round(settings, sites, plain_g, 1, keys, clients, Stopwatch())  # warm-up, not counted
        plain_s, secure_s, watch = [], [], Stopwatch()
        for r in range(1, args.rounds + 1):
            for secure in ((False, True) if r % 2 else (True, False)):  # alternate which goes first
                t = time.perf_counter()
                if secure:
                    secure_g = one_round(settings, sites, secure_g, r, keys, clients, watch)
                    secure_s.append(time.perf_counter() - t)
                else:
                    plain_g = one_round(settings, sites, plain_g, r, None, None, Stopwatch())
                    plain_s.append(time.perf_counter() - t)
    plain, secure = statistics.median(plain_s), statistics.median(secure_s)
    result = {
        "dataset": settings.dataset, "sites": args.sites, "rounds": args.rounds,
        "params": int(sum(a.size for a in plain_g.values())),
        "plain_round_s": plain, "integrity_round_s": secure, "ratio": secure / plain,
        "steps_s_per_round": {k: v / args.rounds for k, v in watch.seconds.items()},
    }
    integrity = sum(v for k, v in result["steps_s_per_round"].items() if k not in ("sites: train", "server: aggregate"))
    result["integrity_steps_s"] = integrity
    result["integrity_share_of_plain_round"] = integrity / plain
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"integrity overhead: {args.sites} {settings.dataset} sites, {result['params']:,} parameters, "
          f"median of {args.rounds} rounds")
    print(f"  plain round        {plain:7.3f} s")
    print(f"  with integrity     {secure:7.3f} s   ratio {result['ratio']:.3f} "
          f"({100 * (result['ratio'] - 1):+.1f} %)")
    for step, s in result["steps_s_per_round"].items():
        print(f"    {step:<26} {s:7.3f} s/round")
    print(f"  integrity steps    {integrity:7.3f} s/round = {100 * result['integrity_share_of_plain_round']:.1f} % "
          f"of the plain round (timed directly, immune to the noise of two separate round timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
