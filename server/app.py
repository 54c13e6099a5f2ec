"""FedSeal's ServerApp: the round loop of DESIGN.md §4, one step per block.

For each round: prepare the global model, send it to every site, receive the replies,
check each reply (accept / reject with an audit record), aggregate what was accepted,
evaluate on the global test split, record the round, checkpoint.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import partial
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common import wire
from common.integrity import watermark
from common.integrity.keys import ServerKeys, init_federation, write_he_contexts
from common.integrity.seal import global_context, publish_global
from common.learning.data import load_split
from common.learning.dp import check_model
from common.learning.models import array_spec, get_arrays, initial_model, set_arrays
from common.learning.training import EvalResult, centralized_reference, evaluate
from common.processes import peak_rss_mb
from common.run.records import RoundRecord, RunRecorder, published_metadata
from common.run.settings import RunSettings
from common.run.stages import StageClock
from server import enrolment
from server import roster as roster_mod
from server.dp import round_epsilon, summary_fields
from server.modes import ROUNDS
from server.modes.he import check_he_context
from server.rounds import RoundContext

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config, writing the run folder."""
    settings = RunSettings.from_run_config(context.run_config)
    dp_spec = settings.dp_spec
    if dp_spec is not None and dp_spec.kind == "sample":
        check_model(settings.dataset)  # a layer Opacus cannot train privately fails before round 1
    folder = resolve_out_dir(settings, context.run_id)
    recorder = RunRecorder(folder, resume=settings.resume)
    run_name = recorder.folder.name
    log(INFO, "FedSeal run folder: %s", recorder.folder)
    connected = roster_mod.first_nodes(grid, settings)
    keys_root = Path(settings.keys_dir) if settings.keys_dir else recorder.folder / "keys"
    sites = settings.clients or len(connected)
    keys = load_or_make_keys(keys_root, sites, settings.clients_per_round or sites, simulation=not settings.keys_dir)
    roster = roster_mod.Roster(list(keys.seal_keys))  # every site with keys; nodes are bound as they enrol
    if settings.secure_mode == "he":  # refuses a context that holds the CKKS secret key, or one too small for the cohort
        check_he_context(keys.he_public_context(), min(settings.clients_per_round or len(roster.sites), len(roster.sites)))
    global_arrays = get_arrays(initial_model(settings.dataset, settings.seed))
    spec = array_spec(global_arrays)
    rounds: list[RoundRecord] = []
    sim_keys = {} if settings.keys_dir else {wire.SIM_KEYS_DIR: str(keys_root)}  # where simulated sites find keys
    if settings.resume:
        rounds, resumed = recorder.resume()
        if resumed is not None:  # None: no round finished yet, start from the initial model
            global_arrays = resumed
        log(INFO, "Resuming after round %d", len(rounds))

    for server_round in range(len(rounds) + 1, settings.num_rounds + 1):
        started = time.perf_counter()
        clock = StageClock(lambda stage, r=server_round: recorder.progress(r, stage))
        node_ids, sampled = enrolment.round_nodes(grid, roster, keys, settings, recorder, run_name, server_round,
                                                  sim_keys, clock)
        clock.start("watermark")

        # 1. Watermark the global model (bound to run and round), sign its digest, keep it.
        published, signature = publish_global(global_arrays, keys.watermark_key, keys.signing_key, run_name,
                                              server_round)
        recorder.save_published(published, server_round, global_context(run_name, server_round), signature)

        # 2-4. The mode's round: send, check every payload, aggregate what was accepted.
        config = {wire.SERVER_ROUND: server_round, wire.RUN_NAME: run_name, wire.SIGNATURE: signature,
                  wire.SECURE_MODE: settings.secure_mode, **sim_keys}
        ctx = RoundContext(grid=grid, node_ids=node_ids, settings=settings, keys=keys, spec=spec, run_name=run_name,
                           server_round=server_round, published=published, base=watermark.strip(published),
                           record=to_record(published), config=config, recorder=recorder, clock=clock,
                           roster=roster)
        result = ROUNDS[settings.secure_mode](ctx)
        if result.arrays is not None:
            global_arrays = result.arrays

        # 5. Evaluate centrally, record the round, checkpoint.
        clock.start("evaluate")
        evaluation = evaluate_global(settings.dataset, global_arrays)
        record = RoundRecord(
            round=server_round, accuracy=evaluation.accuracy, loss=evaluation.loss,
            seconds=round(time.perf_counter() - started, 3), bytes_up=result.bytes_up, bytes_down=result.bytes_down,
            clients_used=len(result.used), rejected=result.rejected, recovered=result.recovered,
            stages=clock.result(), sampled=len(sampled), used=sorted(result.used, key=roster_mod.site_order),
            epsilon=round_epsilon(dp_spec, server_round, result.epsilon, result.used, roster.sample_rate(settings)),
        )
        rounds.append(record)
        recorder.checkpoint(global_arrays, server_round)
        recorder.record_round(record)
        log(INFO, "Round %d: accuracy %.4f loss %.4f (%d sites, %.1f s)", server_round,
            evaluation.accuracy, evaluation.loss, len(result.used), record.seconds)

    final_round = settings.num_rounds + 1
    recorder.progress(settings.num_rounds, "centralized reference")
    final, signature = publish_global(global_arrays, keys.watermark_key, keys.signing_key, run_name, final_round)
    recorder.save_model(final, published_metadata(final, global_context(run_name, final_round), signature,
                                                  {"dataset": settings.dataset, "rounds": str(settings.num_rounds)}))
    reference = centralized_reference(
        settings.dataset, epochs=settings.num_rounds * settings.local_epochs, lr=settings.lr,
        batch_size=settings.batch_size, seed=settings.seed,
    )
    recorder.write_summary(build_summary(settings, context, rounds, reference, roster, run_name))


def load_or_make_keys(root: Path, clients: int, per_round: int, *, simulation: bool) -> ServerKeys:
    """The server's keys under `root`; a simulation makes the federation's keys on first use (its
    HE context sized for sums of `per_round` sites)."""
    if simulation and not (root / "server").exists():
        init_federation(root, clients, he_context_writer=partial(write_he_contexts, max_sites=per_round))
    return ServerKeys.load(root / "server")


def resolve_out_dir(settings: RunSettings, run_id: int) -> Path:
    """The run folder: `out-dir`, or runs/<timestamp>-<run id> under the current directory."""
    if settings.out_dir:
        return Path(settings.out_dir)
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{run_id}"


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Arrays as the record that crosses the wire."""
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


def evaluate_global(dataset: str, arrays: dict[str, np.ndarray]) -> EvalResult:
    """Accuracy and loss of the global model on the fixed global test split."""
    split = load_split(dataset)
    model = initial_model(dataset, 0)
    set_arrays(model, arrays)
    return evaluate(model, split.x_test, split.y_test)


def build_summary(settings: RunSettings, context: Context, rounds: list[RoundRecord],
                  reference: EvalResult, roster: roster_mod.Roster, run_name: str) -> dict:
    """summary.json: the settings, the final and centralized accuracy, every round."""
    return {
        "dataset": settings.dataset,
        "clients": len(roster.sites),
        **roster.summary_fields(settings),
        "secure_mode": settings.secure_mode,
        "partition": settings.partition,
        "seed": settings.seed,
        "num_rounds": settings.num_rounds,
        "local_epochs": settings.local_epochs,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "run_id": context.run_id,
        "run_name": run_name,
        "aggregator": settings.aggregator,
        "on_tamper": settings.on_tamper,
        "inject": settings.inject,
        "final_accuracy": rounds[-1].accuracy if rounds else None,
        "final_loss": rounds[-1].loss if rounds else None,
        "centralized_accuracy": reference.accuracy,
        "centralized_loss": reference.loss,
        "test_examples": reference.num_examples,
        **summary_fields(settings.dp_spec, rounds, roster.sample_rate(settings)),
        "server_peak_rss_mb": peak_rss_mb(),  # the server's process (in simulation also Flower's SuperLink)
        "rounds": [r.to_json() for r in rounds],
    }
