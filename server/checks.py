"""Check a site's reply before it touches the aggregate: accept, or reject with a reason.

DESIGN.md §4 step 4: the structure of the reply (names, dtypes, shapes, size, finite values),
then the site's seal on exactly the bytes received. A refusal of the global model by the
site is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from common import wire
from common.errors import KeyFileError
from common.integrity.keys import ServerKeys
from common.integrity.seal import SealError, open_update
from server.aggregation import Update

NUMPY_STYPE = "numpy.ndarray"
MAX_PAYLOAD_FACTOR = 2  # serialized arrays carry a small .npy header each
NPY_HEADER_ALLOWANCE = 256  # bytes per array: its .npy header (128 for the shapes of a state dict)


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one reply: `update` when accepted, `reason` when rejected."""

    site: str
    update: Update | None = None
    reason: str = ""
    refused: bool = False  # the site refused the global model (reason says why)
    update_recovered: bool = False  # the seal failed but the update was restored bit-exactly
    global_recovered: bool = False  # the site recovered a tampered global model before training
    tampered: dict[str, list[int]] | None = None  # tensor -> blocks that failed the seal

    @property
    def accepted(self) -> bool:
        return self.update is not None


def site_of(reply: Message) -> str:
    """How a site is named in records: the client id it claims, else its Flower node id."""
    if not reply.has_error():
        config = reply.content.get(wire.CONFIG)
        if isinstance(config, ConfigRecord) and isinstance(config.get(wire.CLIENT_ID), str):
            return config[wire.CLIENT_ID]
    return f"node-{reply.metadata.src_node_id}"


def refusal_event(reply: Message) -> str:
    """The audit event of a refusal: `dp_budget_spent` when the site's DP budget is spent,
    `site_failed` when its own data, evaluation or training failed, else `global_refused` (it
    refused the global model)."""
    config = reply.content.get(wire.CONFIG) if not reply.has_error() else None
    if isinstance(config, ConfigRecord) and int(config.get(wire.DP_BUDGET_SPENT, 0) or 0) == 1:
        return "dp_budget_spent"
    if isinstance(config, ConfigRecord) and int(config.get(wire.SITE_FAILED, 0) or 0) == 1:
        return "site_failed"
    return "global_refused"


def refusal_of(reply: Message) -> Verdict | None:
    """The site's refusal of the round (its reason), or None when the reply is not a refusal."""
    if not reply.has_error():
        config = reply.content.get(wire.CONFIG)
        if isinstance(config, ConfigRecord) and wire.REFUSED in config:
            return Verdict(site_of(reply), reason=str(config[wire.REFUSED]), refused=True)
    return None


def num_examples_of(reply: Message) -> int | str:
    """The reply's positive integer num-examples, or the reason it has none."""
    metrics = reply.content.get(wire.METRICS)
    if not isinstance(metrics, MetricRecord):
        return f"no MetricRecord under {wire.METRICS!r}"
    n = metrics.get(wire.NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return f"{wire.NUM_EXAMPLES} must be a positive integer, got {n!r}"
    return n


def check_sealed_reply(reply: Message, spec: dict[str, tuple[tuple[int, ...], str]], keys: ServerKeys,
                       run_name: str, server_round: int, *, recover: bool) -> Verdict:
    """check_reply, then the site's seal: the weights must carry the seal of the site they
    claim to come from, for this run and round. With `recover`, a tampered update within the
    recovery bound is restored bit-exactly and accepted."""
    if (refusal := refusal_of(reply)) is not None:
        return refusal
    site = site_of(reply)
    verdict = check_reply(reply, spec)
    if not verdict.accepted:
        return verdict
    try:
        seal_key = keys.seal_key(site)
    except KeyFileError:
        return Verdict(site, reason="no seal key for this site id (unknown site)")
    try:
        opened = open_update(verdict.update.arrays, spec, seal_key, run_name, server_round, site, recover=recover)
    except SealError as exc:
        tampered = {n: d.tampered_blocks for n, d in exc.report.tensors.items()} if exc.report else None
        return Verdict(site, reason=f"seal check failed: {exc.reason}", tampered=tampered)
    metrics = reply.content[wire.METRICS]
    update = Update(site=site, arrays=opened.values(), num_examples=verdict.update.num_examples)
    tampered = {n: d.tampered_blocks for n, d in opened.report.tensors.items()} if opened.report else None
    return Verdict(site, update=update, update_recovered=opened.recovered, tampered=tampered,
                   global_recovered=bool(metrics.get(wire.GLOBAL_RECOVERED, 0)))


def check_reply(reply: Message, spec: dict[str, tuple[tuple[int, ...], str]]) -> Verdict:
    """Accept a reply only if it is a well-formed `none`-mode payload matching `spec`.

    Checks: no error reply; an ArrayRecord under "arrays" with exactly the expected names,
    numpy serialization, dtypes and shapes, and only finite values; a positive integer
    "num-examples" in the MetricRecord under "metrics".
    """
    site = site_of(reply)
    if reply.has_error():
        return Verdict(site, reason=f"site reported an error: {reply.error.reason}")
    content = reply.content
    arrays_rec = content.get(wire.ARRAYS)
    if not isinstance(arrays_rec, ArrayRecord):
        return Verdict(site, reason=f"no ArrayRecord under {wire.ARRAYS!r}")
    n = num_examples_of(reply)
    if isinstance(n, str):
        return Verdict(site, reason=n)
    missing, extra = sorted(set(spec) - set(arrays_rec)), sorted(set(arrays_rec) - set(spec))
    if missing or extra:
        return Verdict(site, reason=f"array names differ: missing {missing}, unexpected {extra}")
    expected_bytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())
    received = payload_bytes(arrays_rec)
    if received > MAX_PAYLOAD_FACTOR * expected_bytes + NPY_HEADER_ALLOWANCE * len(spec) + 4096:  # many tiny tensors
        return Verdict(site, reason=f"payload is {received} bytes, far larger than the model's {expected_bytes}")
    arrays: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in spec.items():
        arr = arrays_rec[name]
        if arr.stype != NUMPY_STYPE or arr.dtype != dtype or tuple(arr.shape) != tuple(shape):
            return Verdict(site, reason=f"array {name!r}: got {arr.dtype}{list(arr.shape)} ({arr.stype}), "
                                        f"expected {dtype}{list(shape)}")
        try:
            value = arr.numpy()
        except Exception as exc:  # malformed bytes: the site is rejected, the server goes on
            return Verdict(site, reason=f"array {name!r}: cannot decode: {exc}")
        if str(value.dtype) != dtype or tuple(value.shape) != tuple(shape):
            return Verdict(site, reason=f"array {name!r}: bytes decode to {value.dtype}{list(value.shape)}")
        if not np.isfinite(value).all():
            return Verdict(site, reason=f"array {name!r}: contains NaN or Inf")
        arrays[name] = value
    return Verdict(site, update=Update(site=site, arrays=arrays, num_examples=n))


def payload_bytes(record: ArrayRecord) -> int:
    """Serialized size of the arrays in a record (what bytes_up/bytes_down count)."""
    return sum(len(arr.data) for arr in record.values())
