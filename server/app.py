"""FedSeal's ServerApp: the round loop of DESIGN.md §4, one step per block.

For each round: prepare the global model, send it to every site, receive the replies,
check each reply (accept / reject with an audit record), aggregate what was accepted,
evaluate on the global test split, record the round, checkpoint.
"""

from __future__ import annotations

import time
from datetime import datetime
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common import wire
from common.data import load_split
from common.models import array_spec, get_arrays, initial_model, set_arrays
from common.records import RoundRecord, RunRecorder
from common.settings import RunSettings
from common.training import EvalResult, centralized_reference, evaluate
from server.aggregation import Update, fedavg
from server.checks import check_reply, payload_bytes

app = ServerApp()

NODE_WAIT_LOG_SECONDS = 10


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config, writing the run folder."""
    settings = RunSettings.from_run_config(context.run_config)
    recorder = RunRecorder(resolve_out_dir(settings, context.run_id))
    log(INFO, "FedSeal run folder: %s", recorder.folder)
    global_arrays = get_arrays(initial_model(settings.dataset, settings.seed))
    spec = array_spec(global_arrays)
    rounds: list[RoundRecord] = []

    for server_round in range(1, settings.num_rounds + 1):
        started = time.perf_counter()
        node_ids = wait_for_nodes(grid, settings.min_clients)

        # 1. Prepare the global model (seam: embed the watermark and sign the digest here).
        published = prepare_global_model(global_arrays, context.run_id, server_round)

        # 2. Send train messages to every site and wait for the replies.
        messages = [train_message(published, node_id, server_round) for node_id in node_ids]
        replies = list(grid.send_and_receive(messages))
        bytes_down = payload_bytes(published) * len(messages)
        bytes_up = sum(payload_bytes(r.content[wire.ARRAYS]) for r in replies
                       if not r.has_error() and isinstance(r.content.get(wire.ARRAYS), ArrayRecord))

        # 3. Check every reply before it touches the aggregate; reject malformed ones.
        accepted: list[Update] = []
        rejected: list[str] = []
        for reply in replies:
            verdict = check_reply(reply, spec)
            if verdict.accepted:
                accepted.append(verdict.update)
            else:
                rejected.append(verdict.site)
                recorder.audit("reply-rejected", round=server_round, site=verdict.site, reason=verdict.reason)
                log(WARNING, "Round %d: rejected site %s: %s", server_round, verdict.site, verdict.reason)
        missing = len(messages) - len(replies)
        if missing:
            recorder.audit("replies-missing", round=server_round, count=missing)

        # 4. Aggregate the accepted payloads (FedAvg weighted by num-examples, float32).
        if len(accepted) >= settings.min_clients:
            global_arrays = fedavg(accepted)
        else:
            recorder.audit("round-not-aggregated", round=server_round, accepted=len(accepted),
                           min_clients=settings.min_clients)

        # 5. Evaluate centrally, record the round, checkpoint.
        result = evaluate_global(settings.dataset, global_arrays)
        record = RoundRecord(
            round=server_round, accuracy=result.accuracy, loss=result.loss,
            seconds=round(time.perf_counter() - started, 3), bytes_up=bytes_up, bytes_down=bytes_down,
            clients_used=len(accepted), rejected=rejected, recovered=[],
        )
        rounds.append(record)
        recorder.record_round(record)
        recorder.checkpoint(global_arrays, server_round)
        log(INFO, "Round %d: accuracy %.4f loss %.4f (%d sites, %.1f s)", server_round,
            result.accuracy, result.loss, len(accepted), record.seconds)

    recorder.save_model(global_arrays, {"dataset": settings.dataset, "rounds": str(settings.num_rounds)})
    reference = centralized_reference(
        settings.dataset, epochs=settings.num_rounds * settings.local_epochs, lr=settings.lr,
        batch_size=settings.batch_size, seed=settings.seed,
    )
    recorder.write_summary(build_summary(settings, context, rounds, reference, len(node_ids)))


def resolve_out_dir(settings: RunSettings, run_id: int) -> Path:
    """The run folder: `out-dir`, or runs/<timestamp>-<run id> under the current directory."""
    if settings.out_dir:
        return Path(settings.out_dir)
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{run_id}"


def wait_for_nodes(grid: Grid, min_clients: int) -> list[int]:
    """Block until at least `min_clients` sites are connected; return all connected, sorted."""
    waited = 0.0
    while len(node_ids := sorted(grid.get_node_ids())) < min_clients:
        if waited % NODE_WAIT_LOG_SECONDS == 0:
            log(INFO, "Waiting for sites: %d connected, %d required", len(node_ids), min_clients)
        time.sleep(1.0)
        waited += 1.0
    return node_ids


def prepare_global_model(arrays: dict[str, np.ndarray], run_id: int, server_round: int) -> ArrayRecord:
    """The record sent to sites. Seam: the watermark (bound to run/round) and signature go here."""
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


def train_message(published: ArrayRecord, node_id: int, server_round: int) -> Message:
    """A train instruction for one site."""
    content = RecordDict({
        wire.ARRAYS: published,
        wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: server_round}),
    })
    return Message(content=content, dst_node_id=node_id, message_type=wire.TRAIN, group_id=str(server_round))


def evaluate_global(dataset: str, arrays: dict[str, np.ndarray]) -> EvalResult:
    """Accuracy and loss of the global model on the fixed global test split."""
    split = load_split(dataset)
    model = initial_model(dataset, 0)
    set_arrays(model, arrays)
    return evaluate(model, split.x_test, split.y_test)


def build_summary(settings: RunSettings, context: Context, rounds: list[RoundRecord],
                  reference: EvalResult, clients: int) -> dict:
    """summary.json: the settings, the final and centralized accuracy, every round."""
    return {
        "dataset": settings.dataset,
        "clients": clients,
        "secure_mode": settings.secure_mode,
        "partition": settings.partition,
        "seed": settings.seed,
        "num_rounds": settings.num_rounds,
        "local_epochs": settings.local_epochs,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "run_id": context.run_id,
        "final_accuracy": rounds[-1].accuracy if rounds else None,
        "final_loss": rounds[-1].loss if rounds else None,
        "centralized_accuracy": reference.accuracy,
        "centralized_loss": reference.loss,
        "test_examples": reference.num_examples,
        "rounds": [r.to_json() for r in rounds],
    }
