#!/usr/bin/env python3
"""The task layer's targets (issue #17), measured and printed:

1. `baseline`: the built-in tasks give the per-round accuracy and loss FedSeal gave before tasks
   existed (tests/fixtures/baseline_rounds.json, recorded with commit ca380ba): real
   `fedseal simulate` runs in `none` mode, compared round by round.
2. `overhead`: what the task layer and federated evaluation add to a digits round of 10 sites.
   In one process, the same rounds run alternately the way FedSeal ran them before tasks
   (numpy partition, build_model, train) and with the task layer (load_task, load_data,
   seeded build_model, evaluate the received model on the validation share, Task.train). Both
   include what every round does anyway: the site verifies the watermarked model and seals its
   reply, the server aggregates and scores. Flower's messaging is left out of both, so the
   ratio is an upper bound of what a real simulated round pays. Timed in CPU seconds of this
   process (torch on one thread), so that the other users of a shared machine do not count.
3. `modes`: a task runs 2 rounds in every secure mode (real simulations): seconds and bytes per
   round, federated accuracy per mode.

Usage: .venv/bin/python scripts/bench_task.py [baseline] [overhead] [modes] [--task SPEC]
       [--clients 3] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import wire  # noqa: E402
from common.integrity.keys import ClientKeys, ServerKeys, client_dir, init_federation, server_dir  # noqa: E402
from common.integrity.seal import publish_global, receive_global, seal_update  # noqa: E402
from common.learning.data import load_partition, load_split  # noqa: E402
from common.learning.models import array_spec, build_model, get_arrays, initial_model, set_arrays  # noqa: E402
from common.learning.task import SiteInfo, TrainSettings  # noqa: E402
from common.learning.task_spec import load_task  # noqa: E402
from common.learning.tasks import seeded_model  # noqa: E402
from common.learning.training import derive_seed, evaluate, tensor_dataset, train  # noqa: E402
from common.run.settings import RunSettings  # noqa: E402
from server.aggregation import Update, fedavg  # noqa: E402

BASELINE = ROOT / "tests" / "fixtures" / "baseline_rounds.json"


def simulate(out: Path, *args: str) -> dict:
    """Run `fedseal simulate ARGS --out OUT --quiet --no-report`; return its summary."""
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_HOME=os.environ.get("FLWR_HOME", str(ROOT / ".flwr-home")))
    proc = subprocess.run([sys.executable, "-m", "common.cli", "simulate", *args, "--out", str(out), "--quiet",
                           "--no-report", "--force"], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"simulate {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return json.loads((out / "summary.json").read_text())


def bench_baseline(tmp: Path) -> list[dict]:
    """Each recorded run again with today's code: per-round accuracy and loss side by side."""
    rows = []
    for run in json.loads(BASELINE.read_text())["runs"]:
        summary = simulate(tmp / f"{run['dataset']}-{run['clients']}", "--dataset", run["dataset"], "--clients",
                           str(run["clients"]), "--rounds", str(run["rounds"]), "--seed", "0")
        now = summary["rounds"]
        rows.append({
            "dataset": run["dataset"], "clients": run["clients"], "rounds": run["rounds"],
            "loss_before": run["loss"], "loss_now": [r["loss"] for r in now],
            "accuracy_before": run["accuracy"], "accuracy_now": [r["accuracy"] for r in now],
            "loss_identical": [r["loss"] for r in now] == run["loss"],
            # accuracy was a float32 mean before; now scikit-learn's float64: same count of correct answers
            "accuracy_same": all(abs(a - b) < 1e-6 for a, b in zip((r["accuracy"] for r in now), run["accuracy"])),
            "centralized_loss_identical": summary["centralized_loss"] == run["centralized_loss"],
        })
    return rows


def _keys(tmp: Path, sites: int) -> tuple[ServerKeys, list[ClientKeys]]:
    init_federation(tmp / "keys", sites)
    return (ServerKeys.load(server_dir(tmp / "keys")),
            [ClientKeys.load(client_dir(tmp / "keys", str(i)), client_id=str(i)) for i in range(sites)])


def round_before(settings: RunSettings, sites: int, global_arrays, server_round, keys, clients, test) -> dict:
    """A round as FedSeal ran it before tasks: numpy partitions, build_model(dataset), train."""
    published, signature = publish_global(global_arrays, keys.watermark_key, keys.signing_key, "bench", server_round)
    updates = []
    for cid in range(sites):
        x, y = load_partition(settings.dataset, cid, sites, settings.partition, settings.seed)
        model = build_model(settings.dataset)
        opened = receive_global(published, signature, clients[cid].watermark_key, clients[cid].server_public_key,
                                "bench", server_round, expected=array_spec(get_arrays(model)))
        set_arrays(model, opened.values())
        train(model, tensor_dataset(x, y), epochs=settings.local_epochs, lr=settings.lr,
              batch_size=settings.batch_size, seed=derive_seed(settings.seed, server_round, f"partition-{cid}"))
        seal_update(get_arrays(model), clients[cid].seal_key, "bench", server_round, str(cid))
        updates.append(Update(str(cid), get_arrays(model), len(y)))
    arrays = fedavg(updates)
    model = initial_model(settings.dataset, 0)
    set_arrays(model, arrays)
    evaluate(model, test)
    return arrays


def round_task(settings: RunSettings, sites: int, global_arrays, server_round, keys, clients, test,
               federated: bool = True) -> dict:
    """The same round through the task layer, with federated evaluation at every site (or without)."""
    from client.app import evaluate_received
    from common.run import federated_eval
    from server.evaluation import score

    published, signature = publish_global(global_arrays, keys.watermark_key, keys.signing_key, "bench", server_round)
    updates, evaluations = [], {}
    for cid in range(sites):
        task = load_task(settings.task_spec, settings.task_config)
        train_data, val_data = task.load_data(SiteInfo(str(cid), cid, sites, {}, settings.seed))
        model = seeded_model(task, settings.seed)
        opened = receive_global(published, signature, clients[cid].watermark_key, clients[cid].server_public_key,
                                "bench", server_round, expected=array_spec(get_arrays(model)))
        set_arrays(model, opened.values())
        if federated:
            reported = evaluate_received(task, model, val_data)
            evaluations[str(cid)] = federated_eval.clean(
                {k.removeprefix(wire.EVAL_PREFIX): v for k, v in reported.items() if k != wire.EVAL_EXAMPLES},
                reported[wire.EVAL_EXAMPLES])
        task.train(model, train_data, TrainSettings(settings.local_epochs, settings.lr, settings.batch_size,
                                                    derive_seed(settings.seed, server_round, f"partition-{cid}")))
        seal_update(get_arrays(model), clients[cid].seal_key, "bench", server_round, str(cid))
        updates.append(Update(str(cid), get_arrays(model), len(train_data)))
    arrays = fedavg(updates)
    federated_eval.combine(evaluations)
    score(task, arrays, test)
    return arrays


def bench_overhead(tmp: Path, sites: int, repeats: int) -> dict:
    """CPU seconds (minimum over repeats) of a 10-site digits round before tasks, with the task
    layer, and with the task layer and federated evaluation."""
    torch.set_num_threads(1)
    settings = RunSettings(dataset="digits", seed=0)
    keys, clients = _keys(tmp, sites)
    split = load_split("digits")
    test = tensor_dataset(split.x_test, split.y_test)
    start = get_arrays(initial_model("digits", 0))
    variants = {"before": lambda: round_before(settings, sites, start, 1, keys, clients, test),
                "task_only": lambda: round_task(settings, sites, start, 1, keys, clients, test, federated=False),
                "task": lambda: round_task(settings, sites, start, 1, keys, clients, test)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up: imports, the first optimizer step
    for i in range(repeats):
        names = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in names:
            t = time.process_time()  # CPU seconds of this process: other users of the cores do not count
            variants[name]()
            times[name].append(time.process_time() - t)
    # the minimum over repeats: what the work itself costs, least disturbed by others on the cores
    # (timeit's convention); the medians are reported too
    med = {name: min(v) for name, v in times.items()}
    b = med["before"]
    return {"sites": sites, "repeats": repeats, "seconds_before": round(b, 4),
            "seconds_task_only": round(med["task_only"], 4), "seconds_task": round(med["task"], 4),
            "task_layer_percent": round(100 * (med["task_only"] - b) / b, 2),
            "overhead_percent": round(100 * (med["task"] - b) / b, 2),
            "median_overhead_percent": round(100 * (statistics.median(times["task"]) - statistics.median(times["before"]))
                                             / statistics.median(times["before"]), 2),
            "all": {name: [round(x, 4) for x in v] for name, v in times.items()}}


def bench_modes(tmp: Path, task: str, clients: int) -> list[dict]:
    """2 rounds of `task` in each secure mode: seconds and bytes per round, federated accuracy."""
    rows = []
    for mode in ("none", "he", "masked"):
        s = simulate(tmp / f"mode-{mode}", "--task", task, "--clients", str(clients), "--rounds", "2",
                     "--secure-mode", mode, "--seed", "0")
        rows.append({"mode": mode, "task": task, "clients": clients,
                     "seconds": [r["seconds"] for r in s["rounds"]],
                     "bytes_up": [r["bytes_up"] for r in s["rounds"]], "bytes_down": [r["bytes_down"] for r in s["rounds"]],
                     "federated_accuracy": [r["federated_eval"].get("accuracy") for r in s["rounds"]],
                     "federated_examples": [r["federated_eval"].get("examples") for r in s["rounds"]],
                     "final_federated_eval": s["final_federated_eval"]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["baseline", "overhead", "modes"],
                        choices=["baseline", "overhead", "modes"])
    parser.add_argument("--task", default="fraud", help="the task `modes` runs (a built-in or FILE.py:NAME)")
    parser.add_argument("--clients", type=int, default=3, help="sites of the `modes` runs")
    parser.add_argument("--sites", type=int, default=10, help="sites of the `overhead` round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of each kind in `overhead`")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    out: dict = {"load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "baseline" in args.parts:
            out["baseline"] = bench_baseline(tmp)
        if "overhead" in args.parts:
            out["overhead"] = bench_overhead(tmp, args.sites, args.repeats)
        if "modes" in args.parts:
            out["modes"] = bench_modes(tmp, args.task, args.clients)
    out["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"load average {out['load_average'][0]:.1f} at start, {out['load_average_after'][0]:.1f} at end")
    for row in out.get("baseline", []):
        print(f"baseline {row['dataset']} {row['clients']} sites {row['rounds']} rounds: loss identical "
              f"{row['loss_identical']}, accuracy same {row['accuracy_same']}, centralized loss identical "
              f"{row['centralized_loss_identical']}; loss now {row['loss_now']}")
    if "overhead" in out:
        o = out["overhead"]
        print(f"overhead: digits round of {o['sites']} sites, minimum of {o['repeats']}: before tasks "
              f"{o['seconds_before']:.4f} CPU s; task layer {o['seconds_task_only']:.4f} CPU s "
              f"({o['task_layer_percent']:+.2f} %); task layer + federated evaluation {o['seconds_task']:.4f} CPU s "
              f"({o['overhead_percent']:+.2f} %, target <= 10 %; medians: {o['median_overhead_percent']:+.2f} %)")
    for row in out.get("modes", []):
        print(f"{row['task']} {row['mode']:>6}: {row['clients']} sites, seconds per round {row['seconds']}, bytes up "
              f"{row['bytes_up']}, bytes down {row['bytes_down']}, federated accuracy {row['federated_accuracy']} "
              f"over {row['federated_examples']} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
