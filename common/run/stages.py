"""Seconds per stage of a round (Flower-free): what security and training cost.

The server times its own stages (watermark, check, aggregate, evaluate) with a StageClock;
sites report their own seconds (verify, train, seal) in the reply's metrics, and the round
keeps the slowest site's value per stage (sites work in parallel, the round waits for the
slowest). A round's `stages` dict in rounds.jsonl holds the result; the report draws it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from common import wire

# The order stages are drawn in; "encrypt" (encrypt or mask, and seal) is the sites' work in the
# secure modes; "decrypt" (he) is timed by the server: the round trip to the decrypting site.
ORDER = ("watermark", "enrol", "verify", "train", "seal", "encrypt", "check", "decrypt", "aggregate", "evaluate")
SITE_STAGES = {"verify": wire.VERIFY_SECONDS, "train": wire.TRAIN_SECONDS, "seal": wire.SEAL_SECONDS,
               "encrypt": wire.ENCRYPT_SECONDS}


def _is_seconds(value: object) -> bool:
    """A site's own figure is only taken when it is a plausible number of seconds (a site could
    send anything: it must never break the server)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e6


class StageClock:
    """Adds up seconds per stage; `on_start(stage)` is told when a stage starts (live progress)."""

    def __init__(self, on_start: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._on_start = on_start
        self._stage: str | None = None
        self._since = 0.0

    def start(self, stage: str, *, timed: bool = True) -> None:
        """End the current stage and start `stage` (with timed=False: announce it, do not time it)."""
        self.stop()
        if timed:
            self._stage, self._since = stage, time.perf_counter()
        if self._on_start is not None:
            self._on_start(stage)

    def stop(self) -> None:
        """End the current stage, if any."""
        if self._stage is not None:
            self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + time.perf_counter() - self._since
            self._stage = None

    @contextmanager
    def adding(self, stage: str) -> Iterator[None]:
        """Add the seconds of the `with` block to `stage`, without ending the current stage (work
        done while replies arrive, e.g. checking each one)."""
        since = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - since

    def add_sites(self, metrics: Iterable[Mapping]) -> None:
        """Take the slowest site's reported seconds for each site stage (self-reported by the sites)."""
        metrics = [m for m in metrics if isinstance(m, Mapping)]
        for stage, key in SITE_STAGES.items():
            values = [float(v) for m in metrics if _is_seconds(v := m.get(key))]
            if values:
                self.seconds[stage] = max(values)

    def result(self) -> dict[str, float]:
        """Seconds per stage, rounded to 0.1 ms, in ORDER."""
        self.stop()
        known = [s for s in ORDER if s in self.seconds] + [s for s in self.seconds if s not in ORDER]
        return {s: round(self.seconds[s], 4) for s in known}
