"""The server's view of evaluation: the metrics a site reports in its train reply (federated
evaluation, common/run/federated_eval.py), and the coordinator's own scoring of the global model,
which exists only where the task gives the coordinator data (a simulation's built-in tasks)."""

from __future__ import annotations

import numpy as np
from flwr.app import Message, MetricRecord

from common import wire
from common.learning.models import set_arrays
from common.learning.task import Task
from common.learning.tasks import seeded_model
from common.run import federated_eval

NO_SERVER_DATA = "the task gives the coordinator no test data (it holds none): see federated_eval"
DEPLOYMENT = "deployment: the coordinator loads no data set; see federated_eval"


def site_evaluation(reply: Message) -> dict[str, float] | None:
    """The federated-evaluation metrics in a site's reply ({metric: value, "examples": n}), or
    None if it reports none (or nothing usable)."""
    metrics = reply.content.get(wire.METRICS) if not reply.has_error() else None
    if not isinstance(metrics, MetricRecord):
        return None
    reported = {key.removeprefix(wire.EVAL_PREFIX): metrics[key] for key in metrics.keys()
                if key.startswith(wire.EVAL_PREFIX) and key != wire.EVAL_EXAMPLES}
    return federated_eval.clean(reported, metrics.get(wire.EVAL_EXAMPLES))


def server_data(task: Task, *, simulation: bool):
    """(the coordinator's test data or None, why there is none or what it is)."""
    if not simulation:
        return None, DEPLOYMENT
    data = task.server_test_data()
    if data is None:
        return None, NO_SERVER_DATA
    return data, f"the task's server test data ({len(data)} examples)"


def score(task: Task, arrays: dict[str, np.ndarray], data) -> dict[str, float]:
    """The task's metrics of the model `arrays` on the coordinator's `data`."""
    model = seeded_model(task, 0)
    set_arrays(model, arrays)
    return task.evaluate(model, data)
