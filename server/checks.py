"""Check a site's reply before it touches the aggregate: accept, or reject with a reason.

This is the seam where the seal check goes (DESIGN.md §4 step 4): a later mode verifies
the seal on exactly the bytes received, here, before decoding anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from common import wire
from server.aggregation import Update

NUMPY_STYPE = "numpy.ndarray"


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one reply: `update` when accepted, `reason` when rejected."""

    site: str
    update: Update | None = None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.update is not None


def site_of(reply: Message) -> str:
    """How a site is named in records: its Flower node id."""
    return str(reply.metadata.src_node_id)


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
    metrics = content.get(wire.METRICS)
    if not isinstance(arrays_rec, ArrayRecord):
        return Verdict(site, reason=f"no ArrayRecord under {wire.ARRAYS!r}")
    if not isinstance(metrics, MetricRecord):
        return Verdict(site, reason=f"no MetricRecord under {wire.METRICS!r}")
    n = metrics.get(wire.NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return Verdict(site, reason=f"{wire.NUM_EXAMPLES} must be a positive integer, got {n!r}")
    missing, extra = sorted(set(spec) - set(arrays_rec)), sorted(set(arrays_rec) - set(spec))
    if missing or extra:
        return Verdict(site, reason=f"array names differ: missing {missing}, unexpected {extra}")
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
