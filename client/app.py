"""FedSeal's ClientApp: one site's side of a round (DESIGN.md §4 steps 2-3).

Verify the signed, watermarked global model (recover it if tampered, refuse it if beyond
recovery), evaluate it on this site's validation data (federated evaluation), train the run's
task locally, build the secure mode's payload (sealed weights; sealed ciphertexts,
client/modes/he.py; a sealed masked vector, client/modes/masked.py), reply. The `decrypt` and
`masked` queries are the extra steps of the he and masked modes.
"""

from __future__ import annotations

import math
import secrets
import time
from logging import WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from client.modes import he as mode_he
from client.modes import masked as mode_masked
from common import wire
from common.errors import InputError, KeyFileError, local_reason
from common.integrity import enrol, watermark
from common.integrity.keys import ClientKeys, client_dir
from common.integrity.seal import SealError, receive_global, seal_update
from common.learning import dp
from common.learning.models import array_spec, get_arrays, set_arrays
from common.learning.task import SiteInfo, Task, TrainSettings
from common.learning.task_spec import load_task
from common.learning.tasks import seeded_model
from common.learning.training import derive_seed
from common.run import inject
from common.run.settings import RunSettings

app = ClientApp()

LAST_REPLY = "fedseal-last-reply:"  # context.state: this site's previous sealed reply records (replay injection)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Verify the global model, train on this site's data, reply with the mode's sealed payload."""
    torch.set_num_threads(1)
    settings = RunSettings.from_run_config(context.run_config)
    config = msg.content[wire.CONFIG]
    server_round = int(config[wire.SERVER_ROUND])
    run_name = str(config[wire.RUN_NAME])
    client_id, keys = load_site_keys(context.node_config, config)
    task = load_task(settings.task_spec, settings.task_config)
    try:  # the site's data, path and errors stay here: the server gets one line naming no path
        train_data, val_data = task.load_data(site_info(context.node_config, client_id, settings))
    except Exception as exc:
        return refuse(msg, client_id, failed(context, "load its data", exc), **{wire.SITE_FAILED: 1})
    site_key = f"partition-{client_id}"  # seeds local training: site id = partition id, as in simulation
    fault_id = _injection_id(context.node_config, client_id)
    mode = str(config.get(wire.SECURE_MODE, "none"))

    def injected(kind: str) -> bool:
        return fault_id is not None and inject.wanted(settings.injections, kind, fault_id, server_round)

    def rng(kind: str) -> np.random.Generator:
        return np.random.default_rng(derive_seed(settings.seed, kind, client_id, server_round))

    if injected("drop"):  # the site vanishes for the rest of the round (masked: after sharing its keys)
        raise inject.Vanished(f"site {client_id} vanishes in round {server_round} (injected)")

    # Step 2a: verify the watermark and the signature; recover or refuse.
    model = seeded_model(task, settings.seed)
    received = {name: arr.numpy() for name, arr in msg.content[wire.ARRAYS].items()}
    if injected("tamper-global"):
        received = inject.tamper_global(received, rng("tamper-global"))
    if injected("corrupt-global"):
        received = inject.corrupt_global(received, rng("corrupt-global"))
    tick = time.perf_counter()
    try:
        opened = receive_global(received, bytes(config[wire.SIGNATURE]), keys.watermark_key,
                                keys.server_public_key, run_name, server_round, expected=array_spec(get_arrays(model)))
    except SealError as exc:
        return refuse(msg, client_id, exc.reason)

    # Step 2b: evaluate the verified global model on this site's validation data.
    verify_seconds, tick = time.perf_counter() - tick, time.perf_counter()
    dp_spec = settings.dp_spec  # --dp sample: DP-SGD within the site's budget; --dp client: clip the update
    plan = dp.sample_plan(dp_spec, len(train_data), settings)
    if plan is not None and (spent := dp.budget_spent(dp_spec, plan, server_round)):
        return refuse(msg, client_id, spent, **{wire.DP_BUDGET_SPENT: 1,
                                                wire.DP_EPSILON: plan.epsilon_after(server_round - 1, dp_spec.delta)})
    set_arrays(model, opened.values())
    try:
        evaluation = evaluate_received(task, model, val_data)
    except Exception as exc:
        return refuse(msg, client_id, failed(context, "evaluate the global model on its validation data", exc),
                      **{wire.SITE_FAILED: 1})

    # Step 2c: train the task locally, seeded by (run seed, round, site).
    seed = derive_seed(settings.seed, server_round, site_key)
    try:
        if plan is not None:
            loss = dp.train_private(model, train_data, plan=plan, clip=dp_spec.clip, epochs=settings.local_epochs,
                                    lr=settings.lr, batch_size=settings.batch_size, seed=seed)
        else:
            loss = float(task.train(model, train_data, TrainSettings(settings.local_epochs, settings.lr,
                                                                     settings.batch_size, seed)).get("loss", math.nan))
    except Exception as exc:
        return refuse(msg, client_id, failed(context, "train", exc), **{wire.SITE_FAILED: 1})
    trained = get_arrays(model)
    if dp_spec is not None and dp_spec.kind == "client":
        trained = dp.clip_update(trained, opened.values(), dp_spec.clip)
    # What every mode aggregates: the 24 high bits of each weight (in `none` mode the 8 low ones
    # carry the site's seal), so all modes give the same model for the same seed.
    trained = watermark.strip(trained)

    # Step 3: build the mode's payload and seal it with this site's key, bound to run, round and site.
    train_seconds, tick = time.perf_counter() - tick, time.perf_counter()
    seal_key = secrets.token_bytes(32) if injected("forge-update") else keys.seal_key
    if mode == "he":
        payload = mode_he.build_payload(trained, opened.values(), len(train_data), keys, seal_key, run_name, server_round,
                                        bytes(config.get(wire.CHECK_VALUES, b"")))
    elif mode == "masked":
        payload = mode_masked.build_payload(context, config, trained, opened.values(), client_id, seal_key,
                                            run_name, server_round)
    else:
        payload = RecordDict({wire.ARRAYS: to_record(seal_update(trained, seal_key, run_name, server_round,
                                                                 client_id))})
    seal_seconds = time.perf_counter() - tick
    if injected("tamper-update"):
        payload = (mode_he.tamper(payload, rng("tamper-update")) if mode == "he" else
                   mode_masked.tamper(payload, rng("tamper-update")) if mode == "masked" else
                   RecordDict({wire.ARRAYS: to_record(inject.flip_bits(_arrays(payload[wire.ARRAYS]),
                                                                       rng("tamper-update")))}))
    previous = RecordDict({key.removeprefix(LAST_REPLY): record for key, record in context.state.items()
                           if key.startswith(LAST_REPLY)})
    for name, record in payload.items():
        context.state[LAST_REPLY + name] = record
    if injected("replay-update") and len(previous):
        payload = previous
    content = RecordDict({
        **dict(payload.items()),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: int(len(train_data)), wire.TRAIN_LOSS: float(loss),
                                    wire.GLOBAL_RECOVERED: int(opened.recovered), wire.VERIFY_SECONDS: verify_seconds,
                                    wire.TRAIN_SECONDS: train_seconds,
                                    wire.SEAL_SECONDS if mode == "none" else wire.ENCRYPT_SECONDS: seal_seconds,
                                    **evaluation}),
        wire.CONFIG: ConfigRecord({wire.CLIENT_ID: client_id}),
    })
    if plan is not None:
        content[wire.METRICS][wire.DP_EPSILON] = plan.epsilon_after(server_round, dp_spec.delta)
    return Message(content=content, reply_to=msg)


def refuse(msg: Message, client_id: str, reason: str, **extra: int | float) -> Message:
    """Reply that this site refuses the round, and why (it does not train on a bad model; its DP
    budget is spent or its own data or training failed: `extra` then says so)."""
    content = RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: client_id, wire.REFUSED: reason, **extra})})
    return Message(content=content, reply_to=msg)


def _injection_id(node_config: dict, client_id: str) -> int | None:
    """Which CLIENT of `--inject KIND:CLIENT:ROUND` this site is: its partition id in simulation,
    its numeric client id in deployment (tests tamper with a SuperNode's replies that way)."""
    if wire.PARTITION_ID in node_config:
        return int(node_config[wire.PARTITION_ID])
    return int(client_id) if client_id.isdigit() else None


@app.query("masked")
def masked_stage(msg: Message, context: Context) -> Message:
    """masked mode: the SecAgg+ stages around training (setup, share-keys, unmask; client/modes/masked.py)."""
    settings = RunSettings.from_run_config(context.run_config)
    client_id, keys = load_site_keys(context.node_config, msg.content[wire.CONFIG])

    def num_examples() -> int:
        try:
            return site_examples(settings, context.node_config, client_id)
        except Exception as exc:  # the server hears why in one line, never this site's local path
            raise InputError(failed(context, "load its data", exc)) from None

    return mode_masked.handle_query(msg, context, settings, client_id, keys, _injection_id(context.node_config, client_id),
                               num_examples)


@app.query("enrol")
def enrol_site(msg: Message, context: Context) -> Message:
    """Prove once per run, with this site's seal key, its site id, its node and its example count.
    A node without site keys can prove nothing: it names the site it would be, and the server
    leaves it out (server/enrolment.py). A site whose data cannot be used proves its id with 0
    examples and says why in one line (no local path): the server audits `site_failed`."""
    settings = RunSettings.from_run_config(context.run_config)
    config = msg.content[wire.CONFIG]
    try:
        client_id, keys = load_site_keys(context.node_config, config)
    except KeyFileError as exc:
        log(WARNING, "Cannot enrol: %s", exc)
        return Message(content=RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: site_id(context.node_config)})}),
                       reply_to=msg)
    extra = {}
    try:
        examples = site_examples(settings, context.node_config, client_id)
    except Exception as exc:  # a proven refusal: the server hears why in one line, never this site's local path
        examples, extra = 0, {wire.REFUSED: failed(context, "load its data", exc), wire.SITE_FAILED: 1}
    tag = enrol.proof(keys.seal_key, str(config[wire.RUN_NAME]), client_id, context.node_id, examples,
                      bytes(config[wire.NONCE]))
    content = RecordDict({wire.CONFIG: ConfigRecord({wire.CLIENT_ID: client_id, wire.NUM_EXAMPLES: examples,
                                                     wire.ENROL_PROOF: tag, **extra})})
    return Message(content=content, reply_to=msg)


@app.query("decrypt")
def decrypt(msg: Message, context: Context) -> Message:
    """he mode: decrypt the blinded sum the server sends (this site holds the CKKS secret key)."""
    _, keys = load_site_keys(context.node_config, msg.content[wire.CONFIG])
    min_sites = RunSettings.from_run_config(context.run_config).min_clients
    coefficients = mode_he.decrypt_blinded(msg.content, keys, min_sites)
    content = RecordDict({wire.DECRYPTED: ArrayRecord({wire.COEFFICIENTS: Array(coefficients)})})
    return Message(content=content, reply_to=msg)


def load_site_keys(node_config: dict, config: ConfigRecord) -> tuple[str, ClientKeys]:
    """This site's id and keys: from node config `keys-dir` (and `client-id`) in deployment; in
    simulation, partition `partition-id`'s folder of the keys the run made."""
    client_id = site_id(node_config)
    if wire.KEYS_DIR in node_config:
        folder = Path(str(node_config[wire.KEYS_DIR]))
    elif wire.SIM_KEYS_DIR in config:
        folder = client_dir(str(config[wire.SIM_KEYS_DIR]), client_id)
    else:
        raise InputError(f"node config needs {wire.KEYS_DIR!r}: this site's key folder")
    return client_id, ClientKeys.load(folder, client_id=client_id)


def site_id(node_config: dict) -> str:
    """This site's id: node config `client-id`, else its `keys-dir` folder's name (deployment);
    its partition id (simulation)."""
    if wire.KEYS_DIR in node_config:
        return str(node_config.get(wire.CLIENT_ID, Path(str(node_config[wire.KEYS_DIR])).name))
    if wire.PARTITION_ID in node_config:
        return str(int(node_config[wire.PARTITION_ID]))
    raise InputError(f"node config needs {wire.KEYS_DIR!r}: this site's key folder")


def site_info(node_config: dict, client_id: str, settings: RunSettings) -> SiteInfo:
    """What the task learns about this site: its id, its partition (simulation), its node config."""
    simulated = wire.PARTITION_ID in node_config and wire.NUM_PARTITIONS in node_config
    return SiteInfo(site_id=client_id,
                    partition_id=int(node_config[wire.PARTITION_ID]) if simulated else None,
                    num_partitions=int(node_config[wire.NUM_PARTITIONS]) if simulated else None,
                    node_config=dict(node_config), seed=settings.seed)


def site_examples(settings: RunSettings, node_config: dict, client_id: str) -> int:
    """How many training examples this site holds (masked mode announces it at setup)."""
    task = load_task(settings.task_spec, settings.task_config)
    return len(task.load_data(site_info(node_config, client_id, settings))[0])


def evaluate_received(task: Task, model: torch.nn.Module, val_data) -> dict[str, float]:
    """The task's metrics of the received global model on this site's validation data, as
    reply metrics (wire.EVAL_PREFIX + name, and wire.EVAL_EXAMPLES); none without validation data."""
    if len(val_data) == 0:
        return {}
    metrics = task.evaluate(model, val_data)
    out = {wire.EVAL_PREFIX + str(name): float(value) for name, value in metrics.items()
           if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
    return {**out, wire.EVAL_EXAMPLES: int(len(val_data))}


def failed(context: Context, what: str, exc: Exception) -> str:
    """Log a local failure in full here; return the one line the server gets (no local path)."""
    log(WARNING, "This site could not %s: %s: %s", what, type(exc).__name__, exc)
    return f"site could not {what}: " + local_reason(exc, [str(v) for v in context.node_config.values()])


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: arr.numpy() for name, arr in record.items()}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Arrays as the record that crosses the wire."""
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})
