#!/usr/bin/env python3
"""Accuracy vs epsilon for sample-level DP (DP-SGD with Opacus at each site).

Runs one federation per epsilon in this process, without Flower (like bench_integrity.py):
the same data partitions, seeds, DP-SGD and FedAvg as `fedseal simulate --dp sample:EPS,DELTA`,
training from and averaging the values with the watermark's low bits cleared, as the apps do,
so each row matches what `fedseal simulate` with the same flags reports (the watermark, the
signature and the seals leave these values unchanged). Epsilon "inf" is plain training.

Usage: .venv/bin/python scripts/dp_table.py [--dataset breast-cancer] [--clients 5] [--rounds 5]
       [--epsilons 1,3,8,inf] [--delta 1e-5] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.integrity.watermark import strip  # noqa: E402
from common.learning import dp  # noqa: E402
from common.learning.data import load_partition, load_split  # noqa: E402
from common.learning.models import get_arrays, initial_model, set_arrays  # noqa: E402
from common.learning.training import derive_seed, evaluate, tensor_dataset, train  # noqa: E402
from common.run.settings import RunSettings  # noqa: E402
from server.aggregation import Update, fedavg  # noqa: E402


def federation(settings: RunSettings, clients: int) -> dict:
    """One run: final accuracy, the largest epsilon any site reached, the noise multipliers."""
    spec = settings.dp_spec
    sites = [load_partition(settings.dataset, i, clients, settings.partition, settings.seed) for i in range(clients)]
    plans = [dp.sample_plan(spec, len(y), settings) for _, y in sites]
    split = load_split(settings.dataset)
    global_arrays = get_arrays(initial_model(settings.dataset, settings.seed))
    started = time.perf_counter()
    for server_round in range(1, settings.num_rounds + 1):
        updates = []
        for cid, ((x, y), plan) in enumerate(zip(sites, plans, strict=True)):
            model = initial_model(settings.dataset, 0)
            set_arrays(model, strip(global_arrays))
            seed = derive_seed(settings.seed, server_round, f"partition-{cid}")
            kwargs = dict(epochs=settings.local_epochs, lr=settings.lr, batch_size=settings.batch_size, seed=seed)
            if plan is None:
                train(model, tensor_dataset(x, y), **kwargs)
            else:
                dp.train_private(model, tensor_dataset(x, y), plan=plan, clip=spec.clip, **kwargs)
            updates.append(Update(str(cid), strip(get_arrays(model)), len(y)))
        global_arrays = fedavg(updates)
    model = initial_model(settings.dataset, 0)
    set_arrays(model, global_arrays)
    result = evaluate(model, tensor_dataset(split.x_test, split.y_test))
    eps = [p.epsilon_after(settings.num_rounds, spec.delta) for p in plans] if spec else []
    return {"accuracy": result["accuracy"], "loss": result["loss"], "epsilon_max": max(eps) if eps else math.inf,
            "noise": sorted({round(p.noise, 3) for p in plans}) if spec else [],
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="breast-cancer")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epsilons", default="1,3,8,inf")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Opacus: "secure RNG turned off" (seeded on purpose), hook notes
    rows = []
    for text in args.epsilons.split(","):
        eps = float(text)
        spec = "" if math.isinf(eps) else f"sample:{eps:g},{args.delta:g}"
        settings = RunSettings(dataset=args.dataset, num_rounds=args.rounds, seed=args.seed, dp=spec)
        rows.append({"target_epsilon": eps, **federation(settings, args.clients)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.dataset}, {args.clients} sites, {args.rounds} rounds, delta {args.delta:g}, seed {args.seed}, "
          f"defaults otherwise (DP-SGD clip {dp.DEFAULT_SAMPLE_CLIP:g})")
    print("| target epsilon | epsilon reached (max over sites) | noise multiplier | final accuracy | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        reached = "-" if math.isinf(r["epsilon_max"]) else f"{r['epsilon_max']:.3f}"
        noise = ", ".join(f"{n:g}" for n in r["noise"]) or "0 (no DP)"
        print(f"| {r['target_epsilon']:g} | {reached} | {noise} | {r['accuracy']:.4f} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
