"""FedSeal's ClientApp: one site's side of a round (DESIGN.md §4 steps 2-3).

Load the global model (seam: verify/recover it), train locally, build the reply payload
(seam: seal it), reply with the number of examples.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common import wire
from common.data import dataset_info, load_csv, load_partition
from common.errors import InputError
from common.models import build_model, get_arrays, set_arrays
from common.settings import RunSettings
from common.training import derive_seed, train as train_model

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this site's data and reply with the result."""
    torch.set_num_threads(1)
    settings = RunSettings.from_run_config(context.run_config)
    server_round = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
    x, y, site_key = load_site_data(settings, context.node_config)

    # Step 2a: receive the global model (seam: verify watermark + signature, recover).
    global_arrays = receive_global_model(msg.content[wire.ARRAYS])

    # Step 2b: train locally, seeded by (run seed, round, site).
    model = build_model(settings.dataset)
    set_arrays(model, global_arrays)
    loss = train_model(model, x, y, epochs=settings.local_epochs, lr=settings.lr,
                       batch_size=settings.batch_size, seed=derive_seed(settings.seed, server_round, site_key))

    # Step 3: build the reply payload (seam: seal it with the site's round key).
    content = RecordDict({
        wire.ARRAYS: build_payload(get_arrays(model)),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: int(len(y)), wire.TRAIN_LOSS: float(loss)}),
    })
    return Message(content=content, reply_to=msg)


def load_site_data(settings: RunSettings, node_config: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """This site's (features, labels, seed key).

    Simulation: partition `partition-id` of `num-partitions` of the bundled dataset.
    Deployment: the CSV at node config `data-path`, labels in `label-column`.
    """
    if wire.DATA_PATH in node_config:
        path = str(node_config[wire.DATA_PATH])
        label_column = str(node_config.get(wire.LABEL_COLUMN, "label"))
        x, y = load_csv(path, label_column, dataset_info(settings.dataset))
        return x, y, f"csv-{zlib.crc32(path.encode()):08x}"
    if wire.PARTITION_ID in node_config and wire.NUM_PARTITIONS in node_config:
        pid, num = int(node_config[wire.PARTITION_ID]), int(node_config[wire.NUM_PARTITIONS])
        x, y = load_partition(settings.dataset, pid, num, settings.partition, settings.seed)
        return x, y, f"partition-{pid}"
    raise InputError(f"node config needs {wire.DATA_PATH!r} (deployment) or "
                     f"{wire.PARTITION_ID!r}/{wire.NUM_PARTITIONS!r} (simulation)")


def receive_global_model(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The global model as numpy arrays. Seam: verify/recover the watermarked model here."""
    return {name: arr.numpy() for name, arr in record.items()}


def build_payload(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """The record a site returns. Seam: the site's fragile seal (or mask/ciphertext) goes here."""
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})
