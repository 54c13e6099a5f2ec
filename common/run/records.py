"""The run folder: summary.json, rounds.jsonl, audit.jsonl, checkpoints, model.safetensors.

Whole files are written atomically (temp file in the same folder + os.replace), so a
reader never sees a half-written summary or model. JSONL files grow one complete line
per write, flushed and fsync'ed.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from common.errors import one_line

SUMMARY = "summary.json"
ROUNDS = "rounds.jsonl"
AUDIT = "audit.jsonl"
MODEL = "model.safetensors"
CHECKPOINTS = "checkpoints"
PROGRESS = "progress.json"  # the round and stage in progress (live display of `fedseal simulate`)
CONTEXT_KEY = "fedseal.context"  # metadata: the watermark context of a published model
SIGNATURE_KEY = "fedseal.signature"  # metadata: the server's Ed25519 signature (hex)


@dataclass
class RoundRecord:
    """One finished round, as written to rounds.jsonl and summary.json."""

    round: int
    accuracy: float | None  # on the coordinator's test data; None where it holds none (see summary)
    loss: float | None
    seconds: float
    bytes_up: int
    bytes_down: int
    clients_used: int
    sampled: int = 0  # sites of the round's cohort (server/roster.py); clients_used of them were used
    used: list[str] = field(default_factory=list)  # the sites whose update is in the aggregate
    rejected: list[Any] = field(default_factory=list)
    recovered: list[Any] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (common/run/stages.py)
    epsilon: dict[str, float] = field(default_factory=dict)  # --dp: site -> its epsilon after this round
    federated_eval: dict[str, float] = field(default_factory=dict)  # {metric: weighted mean, "examples": n}
    site_eval: dict[str, dict] = field(default_factory=dict)  # site -> its own {metric: value, "examples": n}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def folder_is_free(path: str | Path) -> bool:
    """True if `path` does not exist or is an empty directory."""
    path = Path(path)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _default_mode())  # mkstemp makes 0600; records are ordinary files
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Save named arrays as safetensors, atomically, as an ordinary (not private) file. Shapes are
    kept exactly: a 0-dim tensor stays 0-dim (np.ascontiguousarray would make it [1])."""
    from safetensors.numpy import save

    atomic_write_bytes(path, save({k: np.require(v, requirements="C") for k, v in arrays.items()}, metadata=metadata))


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Load named arrays from a safetensors file."""
    return load_file(str(path))


def published_metadata(arrays: dict[str, np.ndarray], context: str, signature: bytes,
                       extra: dict[str, str] | None = None) -> dict[str, str]:
    """File metadata of a published (watermarked, signed) global model: what `fedseal verify`
    needs besides the key (the tensor manifest and the context), and the server's signature."""
    from common.integrity import watermark

    return {watermark.MANIFEST_KEY: watermark.manifest_of(arrays), CONTEXT_KEY: context,
            SIGNATURE_KEY: signature.hex(), **(extra or {})}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (an unfinished last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


class RunRecorder:
    """Writes one run's records into its folder.

    Creating a recorder creates the folder (and checkpoints/) and starts empty
    rounds.jsonl and audit.jsonl files.
    """

    def __init__(self, folder: str | Path, *, resume: bool = False) -> None:
        self.folder = Path(folder).resolve()
        (self.folder / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        for name in (ROUNDS, AUDIT):
            if not resume or not (self.folder / name).exists():
                atomic_write_bytes(self.folder / name, b"")

    def resume(self) -> tuple[list[RoundRecord], dict[str, np.ndarray] | None]:
        """The rounds completed so far and the global model after the last of them.

        A round counts as completed once its checkpoint and its rounds.jsonl line exist;
        a half-finished round is dropped from rounds.jsonl and run again."""
        done = [RoundRecord(**r) for r in read_jsonl(self.folder / ROUNDS)]
        while done and not self._checkpoint_path(done[-1].round).exists():
            done.pop()
        atomic_write_bytes(self.folder / ROUNDS, b"".join((json.dumps(r.to_json()) + "\n").encode() for r in done))
        last = done[-1].round if done else 0  # and the audit records of the rounds run again
        kept = [a for a in read_jsonl(self.folder / AUDIT) if not isinstance(a.get("round"), int) or a["round"] <= last]
        atomic_write_bytes(self.folder / AUDIT, b"".join((json.dumps(a) + "\n").encode() for a in kept))
        if not done:
            return [], None
        return done, load_arrays(self._checkpoint_path(done[-1].round))

    def _checkpoint_path(self, server_round: int) -> Path:
        return self.folder / CHECKPOINTS / f"round-{server_round:04d}.safetensors"

    def _append(self, name: str, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        with open(self.folder / name, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def record_round(self, record: RoundRecord) -> None:
        """Append a finished round to rounds.jsonl."""
        self._append(ROUNDS, record.to_json())

    def progress(self, server_round: int, stage: str) -> None:
        """Note the round and stage now running in progress.json (read by live progress displays)."""
        atomic_write_json(self.folder / PROGRESS, {"round": server_round, "stage": stage})

    def audit(self, event: str, **details: Any) -> None:
        """Append a security event (e.g. a rejected reply) to audit.jsonl; its `reason` is made one
        readable line (errors.one_line), whatever the site or the library said."""
        if "reason" in details:
            details["reason"] = one_line(details["reason"])
        self._append(AUDIT, {"event": event, **details})

    def checkpoint(self, arrays: dict[str, np.ndarray], server_round: int) -> Path:
        """Save the global model after `server_round` under checkpoints/."""
        path = self._checkpoint_path(server_round)
        save_arrays(path, arrays, {"round": str(server_round)})
        return path

    def save_published(self, arrays: dict[str, np.ndarray], server_round: int, context: str,
                       signature: bytes) -> Path:
        """Keep the watermarked, signed global model published in `server_round`."""
        path = self.folder / CHECKPOINTS / f"global-round-{server_round:04d}.safetensors"
        save_arrays(path, arrays, published_metadata(arrays, context, signature, {"round": str(server_round)}))
        return path

    def save_model(self, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
        """Save the final global model as model.safetensors."""
        path = self.folder / MODEL
        save_arrays(path, arrays, metadata)
        return path

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write summary.json (atomically; may be rewritten as the run progresses)."""
        path = self.folder / SUMMARY
        atomic_write_json(path, summary)
        return path
