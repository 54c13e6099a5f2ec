"""The ClientApp's train step on a misconfigured site: it refuses by site id, never naming its data path."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.app import train
from common import wire
from common.integrity.keys import client_dir, init_federation
from common.learning.data import write_csv
from server.checks import refusal_event


def test_a_site_whose_csv_has_other_columns_refuses_by_site_id_without_its_path(tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 7)):  # as a running SuperNode has them
        monkeypatch.setattr(TaskIdentity, name, value)
    init_federation(tmp_path / "keys", 2)
    data = tmp_path / "hospital-secret-location" / "site.csv"
    data.parent.mkdir()
    write_csv(data, np.zeros((5, 20), np.float32), np.zeros(5, np.int64))  # breast-cancer needs 30 features
    node_config = {wire.KEYS_DIR: str(client_dir(tmp_path / "keys", "1")), wire.CLIENT_ID: "1",
                   wire.DATA_PATH: str(data)}
    config = ConfigRecord({wire.SERVER_ROUND: 1, wire.RUN_NAME: "run", wire.SIGNATURE: b"", wire.SECURE_MODE: "none"})
    msg = Message(content=RecordDict({wire.CONFIG: config}), dst_node_id=7, message_type=wire.TRAIN)
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
    reply = train(msg, context)
    got = reply.content[wire.CONFIG]
    assert got[wire.CLIENT_ID] == "1" and got[wire.SITE_FAILED] == 1
    assert str(data) not in got[wire.REFUSED] and "hospital-secret-location" not in got[wire.REFUSED]
    assert got[wire.REFUSED].startswith("site could not load its data: ") and "30" in got[wire.REFUSED]
    assert refusal_event(reply) == "site_failed"
