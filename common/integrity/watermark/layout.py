"""Where every bit of a watermarked model lives.

The layout is a pure function of the manifest (tensor names, dtypes, shapes in file order),
k and the key. Rows are 64-parameter blocks of float32 tensors: full blocks first (they carry a
tag and parity), then one short block per tensor tail long enough to hold a tag. Everything
else (non-float32 tensors, float32 tensors or tails too short for a tag) is *side data*: it
is authenticated by HMAC tags kept in a header and protected by the same erasure code.

Data shards (one per row, plus the side data cut into row-sized shards) are dealt by a keyed
permutation into independent Reed-Solomon groups over GF(2^16). A group's parity shards are
cut into *units*: units of full layer-groups fill a whole block's parity area, units of the
remainder layer-group are packed several to a block. Units land in the parity areas of
full blocks chosen by a keyed permutation; a few more blocks hold copies of the header.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np
import reed_solomon_leopard

from common.errors import InputError
from common.integrity.watermark import bits
from common.integrity.watermark.tags import SIDE_TAG_BYTES, TAG_BYTES, keyed_permutation

FORMAT = "fedseal-watermark-v1"
HEADER_COPIES = 3
MAX_GROUP_SHARDS = 49152  # leopard: up to 49152 originals with up to 16384 recovery shards
# Below this many storage blocks a group packs one remainder unit per block: packing several
# would let one tampered block erase the remainder layer of several parity shards at once,
# which a small model's few parity shards cannot absorb.
SMALL_GROUP_BLOCKS = 256


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Carrier:
    """A float32 tensor that carries watermark rows."""

    name: str
    numel: int
    full_blocks: int
    row_start: int  # index of its first full block among all rows
    tail_row: int | None  # row of its short last block, if it carries a tag
    tail_len: int


@dataclass(frozen=True)
class SideItem:
    """Bytes without block tags of their own: a whole tensor or a float32 tail."""

    name: str  # the tensor
    start: int  # first parameter (element) covered
    stop: int
    nbytes: int
    shard_start: int  # index of its first data shard
    shards: int


@dataclass
class Group:
    shards: np.ndarray  # data-shard indices, in code order
    storage: np.ndarray  # full-block rows holding this group's parity units
    parity: int  # number of parity shards
    rem_per_block: int  # remainder units packed into one parity area


@dataclass
class Layout:
    k: int
    specs: list[TensorSpec]
    carriers: list[Carrier]
    side: list[SideItem]
    full_rows: int
    rows: int  # full + short rows
    total_shards: int
    header_rows: np.ndarray  # (HEADER_COPIES, header_blocks) full-block rows
    groups: list[Group] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        return bits.data_bytes(self.k)

    @property
    def parity_bytes(self) -> int:
        """Bytes of each full block's parity area (its capacity minus the tag)."""
        return bits.capacity_bytes(self.k) - TAG_BYTES

    @property
    def header_len(self) -> int:
        return SIDE_TAG_BYTES * (1 + len(self.side))

    def manifest_json(self) -> str:
        return manifest_to_json(self.specs, self.k)


# --- unit geometry -------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitGeometry:
    """How one parity shard (data_bytes long) is cut into units stored in parity areas."""

    full_layers: int  # layer-groups whose unit fills a whole parity area
    unit: int  # bytes of a full unit (= parity area)
    rem: int  # bytes of the remainder unit (0 if none)
    rem_per_block: int  # remainder units packed into one parity area

    def blocks_for(self, parity_shards: int) -> int:
        blocks = self.full_layers * parity_shards
        if self.rem:
            blocks += -(-parity_shards // self.rem_per_block)
        return blocks

    def layer_slices(self) -> list[slice]:
        """Byte ranges of a shard that share one erasure pattern (decoded together)."""
        out = [slice(i * self.unit, (i + 1) * self.unit) for i in range(self.full_layers)]
        if self.rem:
            out.append(slice(self.full_layers * self.unit, self.full_layers * self.unit + self.rem))
        return out


def unit_geometry(k: int) -> UnitGeometry:
    d = bits.data_bytes(k)
    p = bits.capacity_bytes(k) - TAG_BYTES
    full, rem = divmod(d, p)
    return UnitGeometry(full, p, rem, (p // rem) if rem else 0)


def max_parity(geometry: UnitGeometry, blocks: int) -> int:
    """The most parity shards whose units fit in `blocks` parity areas."""
    per = geometry.full_layers + (1 / geometry.rem_per_block if geometry.rem else 0)
    n = int(blocks / per) + 1
    while n > 0 and geometry.blocks_for(n) > blocks:
        n -= 1
    return n


# --- manifest ------------------------------------------------------------------------------


def manifest_to_json(specs: list[TensorSpec], k: int) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "k": k,
            "tensors": [[s.name, s.dtype, list(s.shape)] for s in specs],
        },
        separators=(",", ":"),
    )


def manifest_from_json(text: str) -> tuple[list[TensorSpec], int]:
    """Parse a manifest; raises ValueError when it is not one."""
    obj = json.loads(text)
    if obj.get("format") != FORMAT:
        raise ValueError("unknown watermark format")
    k = int(obj["k"])
    specs = [TensorSpec(str(n), str(np.dtype(d)), tuple(int(x) for x in shape)) for n, d, shape in obj["tensors"]]
    return specs, k


# --- building ------------------------------------------------------------------------------


def check_k(k: int) -> None:
    if k not in bits.ALLOWED_K:
        raise InputError(f"k must be one of {', '.join(map(str, bits.ALLOWED_K))} (got {k})")


def build(specs: list[TensorSpec], k: int, key: bytes) -> Layout:
    """The layout of a model with these tensors (raises InputError without float32 capacity)."""
    check_k(k)
    min_tail = -(-8 * TAG_BYTES // k)  # parameters needed to hold one tag
    carriers: list[Carrier] = []
    full_rows = 0
    for spec in specs:
        if spec.dtype == "float32" and spec.numel >= min_tail:
            nfull, tail = divmod(spec.numel, bits.BLOCK)
            carriers.append(Carrier(spec.name, spec.numel, nfull, full_rows, None, tail))
            full_rows += nfull
    if full_rows == 0:
        raise InputError(
            "the model has no float32 tensor of at least 64 parameters: no capacity to hold a watermark"
        )
    rows = full_rows
    for i, c in enumerate(carriers):
        if c.tail_len >= min_tail:
            carriers[i] = Carrier(c.name, c.numel, c.full_blocks, c.row_start, rows, c.tail_len)
            rows += 1
    side: list[SideItem] = []
    shard = rows
    d = bits.data_bytes(k)
    carrier_by_name = {c.name: c for c in carriers}
    for spec in specs:
        c = carrier_by_name.get(spec.name)
        if c is None:
            start, stop, nbytes = 0, spec.numel, spec.nbytes
        elif c.tail_len and c.tail_row is None:
            start, stop = c.numel - c.tail_len, c.numel
            nbytes = 4 * c.tail_len
        else:
            continue
        n = max(1, -(-nbytes // d))
        side.append(SideItem(spec.name, start, stop, nbytes, shard, n))
        shard += n
    layout = Layout(k, list(specs), carriers, side, full_rows, rows, shard, np.zeros((0, 0), dtype=np.int64))
    _place(layout, key)
    return layout


def _place(layout: Layout, key: bytes) -> None:
    """Choose header blocks, deal shards into groups and parity areas into storage."""
    geometry = unit_geometry(layout.k)
    pool = keyed_permutation(key, "storage", layout.full_rows)
    header_blocks = -(-layout.header_len // layout.parity_bytes)
    if header_blocks > layout.full_rows:
        raise InputError(
            f"the model has too little float32 capacity for a watermark: the tags of its {len(layout.side)} small or "
            f"non-float32 tensors need {header_blocks} blocks of 64 float32 parameters, it has {layout.full_rows}"
        )
    copies = min(HEADER_COPIES, max(1, layout.full_rows // (4 * header_blocks)))
    layout.header_rows = pool[: copies * header_blocks].reshape(copies, header_blocks)
    storage = pool[copies * header_blocks :]
    order = keyed_permutation(key, "shards", layout.total_shards)
    ngroups = max(1, -(-layout.total_shards // MAX_GROUP_SHARDS))
    while True:
        shard_parts = np.array_split(order, ngroups)
        storage_parts = np.array_split(storage, ngroups)
        groups = []
        for shards, blocks in zip(shard_parts, storage_parts, strict=True):
            g = geometry
            if g.rem and len(blocks) < SMALL_GROUP_BLOCKS:
                g = dataclasses.replace(g, rem_per_block=1)
            groups.append(Group(shards, blocks, max_parity(g, len(blocks)), g.rem_per_block))
        if all(reed_solomon_leopard.supports(len(g.shards), max(1, g.parity)) for g in groups):
            break
        ngroups += 1
    layout.groups = groups


def unit_locations(layout: Layout, group: Group) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each layer-group: (storage row, byte offset in its parity area) of every parity shard."""
    geometry = unit_geometry(layout.k)
    n, per_block = group.parity, group.rem_per_block
    out = []
    for layer in range(geometry.full_layers):
        out.append((group.storage[layer * n : (layer + 1) * n], np.zeros(n, dtype=np.int64)))
    if geometry.rem:
        j = np.arange(n)
        base = geometry.full_layers * n
        out.append((group.storage[base + j // per_block], (j % per_block) * geometry.rem))
    return out
