"""FedSeal's ServerApp: the round loop of DESIGN.md §4, one step per block.

For each round: prepare the global model, send it to every site, receive the replies,
check each reply (accept / reject with an audit record), aggregate what was accepted,
combine the sites' evaluations of the model they received (federated evaluation), score the new
model where the task gives the coordinator data (simulation built-ins only), record, checkpoint.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import partial
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common import wire
from common.errors import FedSealError, one_line
from common.integrity import watermark
from common.integrity.keys import ServerKeys, init_federation, write_he_contexts
from common.integrity.seal import global_context, publish_global
from common.learning.dp import check_task
from common.learning.models import array_spec, get_arrays
from common.learning.task_spec import load_task
from common.learning.tasks import centralized_reference, seeded_model
from common.processes import peak_rss_mb
from common.run import federated_eval
from common.run.records import AUDIT, RoundRecord, RunRecorder, published_metadata, read_jsonl
from common.run.report import write_report
from common.run.settings import RunSettings
from common.run.stages import StageClock
from server import enrolment
from server import roster as roster_mod
from server.dp import round_epsilon, summary_fields
from server.evaluation import score, server_data
from server.modes import ROUNDS
from server.modes.he import check_he_context
from server.rounds import RoundContext
from server.stall import STATUS_FINISHED, STATUS_STOPPED, RunStalled, SkipCounter, stall_reason

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config, writing the run folder."""
    settings = RunSettings.from_run_config(context.run_config)
    task = load_task(settings.task_spec, settings.task_config)
    dp_spec = settings.dp_spec
    if dp_spec is not None and dp_spec.kind == "sample":
        check_task(task)  # a layer Opacus cannot train privately fails before round 1
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
    global_arrays = get_arrays(seeded_model(task, settings.seed))
    test_data, server_eval = server_data(task, simulation=not settings.keys_dir)
    spec = array_spec(global_arrays)
    rounds: list[RoundRecord] = []
    sim_keys = {} if settings.keys_dir else {wire.SIM_KEYS_DIR: str(keys_root)}  # where simulated sites find keys
    if settings.resume:
        rounds, resumed = recorder.resume()
        if resumed is not None:  # None: no round finished yet, start from the initial model
            global_arrays = resumed
        log(INFO, "Resuming after round %d", len(rounds))

    skips = SkipCounter(settings.max_skipped_rounds)
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

        # 5. Combine the sites' evaluations; score centrally where the coordinator has data; record, checkpoint.
        clock.start("evaluate")
        evaluation = score(task, global_arrays, test_data) if test_data is not None else {}
        record = RoundRecord(
            round=server_round, accuracy=evaluation.get("accuracy"), loss=evaluation.get("loss"),
            seconds=round(time.perf_counter() - started, 3), bytes_up=result.bytes_up, bytes_down=result.bytes_down,
            clients_used=len(result.used), rejected=result.rejected, recovered=result.recovered,
            stages=clock.result(), sampled=len(sampled), used=sorted(result.used, key=roster_mod.site_order),
            epsilon=round_epsilon(dp_spec, server_round, result.epsilon, result.used, roster.sample_rate(settings)),
            federated_eval=federated_eval.combine(result.evaluations), site_eval=result.evaluations,
        )
        rounds.append(record)
        recorder.checkpoint(global_arrays, server_round)
        recorder.record_round(record)
        log(INFO, "Round %d: %s (%d sites, %.1f s)", server_round, federated_eval.describe(record.federated_eval,
            record.accuracy, record.loss), len(result.used), record.seconds)
        skips.round_done(server_round, skipped=result.arrays is None)
        if skips.stalled:  # the run cannot make progress: stop it and say why
            reason = stall_reason(skips.rounds, read_jsonl(recorder.folder / AUDIT), settings.min_clients)
            recorder.audit("run_stopped", round=server_round, reason=reason)
            recorder.progress(server_round, STATUS_STOPPED)
            recorder.write_summary(build_summary(settings, context, rounds, None, roster, run_name, task.name, server_eval,
                                                 status=STATUS_STOPPED, reason=reason))
            write_run_report(settings, recorder.folder)
            raise RunStalled(f"FedSeal run stopped: {reason}")

    final_round = settings.num_rounds + 1
    recorder.progress(settings.num_rounds, "centralized reference")
    final, signature = publish_global(global_arrays, keys.watermark_key, keys.signing_key, run_name, final_round)
    recorder.save_model(final, published_metadata(final, global_context(run_name, final_round), signature,
                                                  {"dataset": task.name, "rounds": str(settings.num_rounds)}))
    reference = centralized_reference(
        task, epochs=settings.num_rounds * settings.local_epochs, lr=settings.lr,
        batch_size=settings.batch_size, seed=settings.seed,
    ) if test_data is not None else None
    recorder.write_summary(build_summary(settings, context, rounds, reference, roster, run_name, task.name,
                                         server_eval))
    recorder.progress(settings.num_rounds, STATUS_FINISHED)
    write_run_report(settings, recorder.folder)


def write_run_report(settings: RunSettings, folder: Path) -> None:
    """report.html into the run folder, for every kind of run (`report` run config); a report that
    cannot be written is logged, the run's records stand."""
    if not settings.report:
        return
    try:
        log(INFO, "FedSeal report: %s", write_report(folder))
    except (ImportError, OSError, FedSealError) as exc:
        log(WARNING, "FedSeal report.html not written: %s", one_line(exc))


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


def build_summary(settings: RunSettings, context: Context, rounds: list[RoundRecord],
                  reference: dict | None, roster: roster_mod.Roster, run_name: str, task_name: str,
                  server_eval: str, *, status: str = STATUS_FINISHED, reason: str | None = None) -> dict:
    """summary.json: how the run ended (status, and why when stopped), the settings, the final
    federated evaluation, the final and centralized accuracy (null where the coordinator holds no
    data, `server_evaluation` says why, or when stopped: no reference is trained), every round."""
    return {
        "status": status,
        **({"reason": reason} if reason else {}),
        "dataset": task_name,
        "task": settings.task_spec,
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
        "final_federated_eval": rounds[-1].federated_eval if rounds else {},
        "server_evaluation": server_eval,
        "centralized_accuracy": reference.get("accuracy") if reference else None,
        "centralized_loss": reference.get("loss") if reference else None,
        "test_examples": reference["examples"] if reference else None,
        **summary_fields(settings.dp_spec, rounds, roster.sample_rate(settings)),
        "server_peak_rss_mb": peak_rss_mb(),  # the server's process (in simulation also Flower's SuperLink)
        "rounds": [r.to_json() for r in rounds],
    }
