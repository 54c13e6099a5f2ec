"""Fault injection for simulations: `--inject KIND:CLIENT:ROUND` (repeatable).

Each injection acts at one site (client id = partition id) in one round, on the site's side
of the wire, so it models what a network or storage attacker could do to the bytes:
- tamper-update: 8 bits flipped in one block of the site's sealed reply, after sealing
  (within the recovery bound: `--on-tamper recover` restores it);
- replay-update: the site sends its sealed reply of the previous round;
- forge-update: the reply is sealed with a key that is not the site's;
- tamper-global: the global model is tampered on its way to the site (about 5 % of blocks
  overwritten plus a few exponent flips): the site must recover it bit-exactly;
- corrupt-global: the global model is tampered beyond the recovery bound: the site must refuse;
- drop: the site vanishes in that round after receiving the global model (in masked mode: after
  sharing its keys, before sending its masked vector): the server gets no usable reply from it
  for the rest of the round;
- drop-late: masked mode: the site sends its masked vector, then vanishes before the unmask stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import InputError

KINDS = ("tamper-update", "replay-update", "forge-update", "tamper-global", "corrupt-global", "drop", "drop-late")
BLOCK = 64


class Vanished(RuntimeError):
    """Raised by a site that an injected `drop` / `drop-late` makes vanish: the ClientApp fails the
    message, so the server receives an error instead of a reply (what a dead site looks like)."""


@dataclass(frozen=True)
class Injection:
    kind: str
    client: int
    round: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.client}:{self.round}"


def parse(specs: str | list[str] | tuple[str, ...]) -> tuple[Injection, ...]:
    """Parse "KIND:C:R" items (a list, or comma-separated strings); InputError when bad."""
    items = [part for spec in ([specs] if isinstance(specs, str) else specs) for part in spec.split(",")]
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in KINDS:
            raise InputError(f"bad --inject {item!r}: expected KIND:CLIENT:ROUND with KIND one of {', '.join(KINDS)}")
        try:
            client, rnd = int(parts[1]), int(parts[2])
        except ValueError:
            raise InputError(f"bad --inject {item!r}: CLIENT and ROUND must be integers") from None
        if client < 0 or rnd < 1:
            raise InputError(f"bad --inject {item!r}: CLIENT must be >= 0 and ROUND >= 1")
        if parts[0] == "replay-update" and rnd < 2:
            raise InputError(f"bad --inject {item!r}: a replay needs a previous round (ROUND >= 2)")
        out.append(Injection(parts[0], client, rnd))
    return tuple(out)


def to_text(injections: tuple[Injection, ...]) -> str:
    """The run-config form: comma-separated KIND:C:R."""
    return ",".join(str(i) for i in injections)


def wanted(injections: tuple[Injection, ...], kind: str, client: int, server_round: int) -> bool:
    return Injection(kind, client, server_round) in injections


def _float_blocks(arrays: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    return [(n, b) for n in sorted(arrays) if arrays[n].dtype == np.float32 for b in range(arrays[n].size // BLOCK)]


def flip_bits(arrays: dict[str, np.ndarray], rng: np.random.Generator, count: int = 8) -> dict[str, np.ndarray]:
    """A copy with `count` distinct random bits flipped inside one random 64-parameter float32
    block: a localized corruption, within the recovery bound even of the smallest model (on
    breast-cancer's 18 blocks, 8 bits spread over the whole model hit 3-7 blocks, beyond it)."""
    out = {n: a.copy() for n, a in arrays.items()}
    blocks = _float_blocks(out)
    name, b = blocks[rng.integers(len(blocks))]
    words = out[name].reshape(-1).view(np.uint32)
    for pos in rng.choice(BLOCK * 32, count, replace=False):
        words[b * BLOCK + int(pos) // 32] ^= np.uint32(1 << (int(pos) % 32))
    return out


def overwrite_blocks(arrays: dict[str, np.ndarray], rng: np.random.Generator, fraction: float,
                     exponent_flips: int = 0) -> dict[str, np.ndarray]:
    """A copy with `fraction` of the 64-parameter float32 blocks overwritten (at least one),
    plus `exponent_flips` flips of an exponent bit inside those blocks."""
    out = {n: a.copy() for n, a in arrays.items()}
    blocks = _float_blocks(out)
    count = max(1, int(round(fraction * len(blocks))))
    chosen = [blocks[i] for i in rng.choice(len(blocks), count, replace=False)]
    for name, b in chosen:
        flat = out[name].reshape(-1)
        flat[b * BLOCK : (b + 1) * BLOCK] = rng.normal(0, 0.1, BLOCK).astype(np.float32)
    for _ in range(exponent_flips):
        name, b = chosen[rng.integers(len(chosen))]
        words = out[name].reshape(-1).view(np.uint32)
        words[b * BLOCK + int(rng.integers(BLOCK))] ^= np.uint32(1 << 30)
    return out


def tamper_global(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """About 5 % of blocks overwritten plus a few exponent flips: within the recovery bound."""
    return overwrite_blocks(arrays, rng, 0.05, exponent_flips=3)


def corrupt_global(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Half of all blocks overwritten: far beyond the recovery bound."""
    return overwrite_blocks(arrays, rng, 0.5)
