"""Embedding, checking and restoring the watermark on rows of a layout.

Works on one `Model` view: the full and short blocks as a (rows, 64) uint32 array and the
side data as byte strings. `common.integrity.watermark.api` maps state dicts and files onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import reed_solomon_leopard

from common.integrity.watermark import bits
from common.integrity.watermark.layout import (
    Group,
    Layout,
    unit_geometry,
    unit_locations,
)
from common.integrity.watermark.tags import (
    SIDE_TAG_BYTES,
    TAG_BYTES,
    BlockMac,
    side_tag,
)


@dataclass
class Model:
    """A model as the codec sees it. `rows_present`/`side_present` say what the file held."""

    rows: np.ndarray  # (layout.rows, 64) uint32
    side: list[bytes]
    rows_present: np.ndarray  # bool per row
    side_present: np.ndarray  # bool per side item


@dataclass
class Check:
    """What a check found, row by row and item by item."""

    bad_rows: np.ndarray  # bool per row
    bad_side: np.ndarray  # bool per side item
    header_readable: bool
    manifest_ok: bool
    recoverable: bool


class Codec:
    """The watermark of one layout under one key and context."""

    def __init__(self, layout: Layout, key: bytes, context: bytes):
        self.layout = layout
        self.key = key
        self.context = context
        words = bits.BLOCK + layout.parity_bytes // 4
        self.mac = BlockMac(key, context, words)
        self._pads = self._row_pads()
        self._mask = bits.low_mask(layout.k)
        # reed-solomon-simd stores 16-bit symbol s of a shard as bytes lo(s) and lo(s) + 32 of its
        # 64-byte chunk: symbols, not bytes, are what decode independently of each other.
        symbols = layout.data_bytes // 2
        s = np.arange(symbols)
        self._sym_bytes = np.stack([64 * (s // 32) + s % 32, 64 * (s // 32) + 32 + s % 32], axis=1)
        self._shard_len = 64 * -(-symbols // 32)
        self._layer_bytes = [self._sym_bytes[sl.start // 2 : sl.stop // 2].reshape(-1) for sl in self._layers()]

    def _row_pads(self) -> np.ndarray:
        pads = np.zeros(self.layout.rows, dtype=np.uint32)
        for c in self.layout.carriers:
            count = c.full_blocks + (1 if c.tail_row is not None else 0)
            p = self.mac.pads(c.name, count)
            pads[c.row_start : c.row_start + c.full_blocks] = p[: c.full_blocks]
            if c.tail_row is not None:
                pads[c.tail_row] = p[c.full_blocks]
        return pads

    # --- pieces ----------------------------------------------------------------------------

    def _shards(self, hi: np.ndarray, side: list[bytes]) -> np.ndarray:
        """All data shards in reed-solomon-simd's byte order (rows first, then side data)."""
        lay = self.layout
        logical = np.zeros((lay.total_shards, lay.data_bytes), dtype=np.uint8)
        logical[: lay.rows] = bits.pack_high(hi, lay.k)
        for item, payload in zip(lay.side, side, strict=True):
            flat = np.frombuffer(payload, dtype=np.uint8)
            view = logical[item.shard_start : item.shard_start + item.shards].reshape(-1)
            view[: len(flat)] = flat[: item.nbytes]
        if self._shard_len == lay.data_bytes:
            return logical  # whole 64-byte chunks: any byte order will do
        data = np.zeros((lay.total_shards, self._shard_len), dtype=np.uint8)
        data[:, self._sym_bytes.reshape(-1)] = logical
        return data

    def _logical(self, data: np.ndarray) -> np.ndarray:
        if self._shard_len == self.layout.data_bytes:
            return data
        return data[:, self._sym_bytes.reshape(-1)]

    def _side_payloads(self, data: np.ndarray) -> list[bytes]:
        return [
            self._logical(data[i.shard_start : i.shard_start + i.shards]).reshape(-1)[: i.nbytes].tobytes()
            for i in self.layout.side
        ]

    def _header(self, side: list[bytes]) -> bytes:
        lay = self.layout
        parts = [side_tag(self.key, self.context, "manifest", lay.manifest_json().encode())]
        for item, payload in zip(lay.side, side, strict=True):
            parts.append(side_tag(self.key, self.context, f"{item.name}[{item.start}:{item.stop}]", payload))
        return b"".join(parts)

    def _parity_areas(self, data: np.ndarray, side: list[bytes]) -> np.ndarray:
        lay = self.layout
        area = np.zeros((lay.rows, lay.parity_bytes), dtype=np.uint8)
        for group in lay.groups:
            if group.parity == 0:
                continue
            recovery = reed_solomon_leopard.encode(_rows_as_bytes(data[group.shards]), group.parity)
            parity = np.frombuffer(b"".join(recovery), dtype=np.uint8).reshape(group.parity, self._shard_len)
            self._store_units(area, group, parity)
        header = np.zeros(lay.header_rows.shape[1] * lay.parity_bytes, dtype=np.uint8)
        text = self._header(side)
        header[: len(text)] = np.frombuffer(text, dtype=np.uint8)
        for copy in lay.header_rows:
            area[copy] = header.reshape(len(copy), lay.parity_bytes)
        return area

    def _store_units(self, area: np.ndarray, group: Group, parity: np.ndarray) -> None:
        for layer, (rows, offsets) in zip(self._layer_bytes, unit_locations(self.layout, group), strict=True):
            units = parity[:, layer]
            if layer.size == self.layout.parity_bytes:
                area[rows] = units
            else:
                area[rows[:, None], offsets[:, None] + np.arange(layer.size)[None, :]] = units

    def _layers(self) -> list[slice]:
        return unit_geometry(self.layout.k).layer_slices()

    def _tags(self, hi: np.ndarray, area: np.ndarray) -> np.ndarray:
        return self.mac.tags(hi, area.view(np.uint32), pads=self._pads)

    # --- the three operations --------------------------------------------------------------

    def embed(self, model: Model) -> np.ndarray:
        """The watermarked rows of a model (side data is left as it is)."""
        lay = self.layout
        hi = model.rows & ~self._mask
        area = self._parity_areas(self._shards(hi, model.side), model.side)
        capacity = np.empty((lay.rows, bits.capacity_bytes(lay.k)), dtype=np.uint8)
        capacity[:, TAG_BYTES:] = area
        capacity[:, :TAG_BYTES] = self._tags(hi, area).view(np.uint8).reshape(-1, TAG_BYTES)
        return hi | bits.pack_low(capacity, lay.k)

    def _read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        capacity = bits.unpack_low(rows, self.layout.k)
        stored = np.ascontiguousarray(capacity[:, :TAG_BYTES]).view(np.uint32).reshape(-1)
        area = np.ascontiguousarray(capacity[:, TAG_BYTES:])
        return rows & ~self._mask, area, stored

    def check(self, model: Model) -> Check:
        hi, area, stored = self._read(model.rows)
        return self._check(model, hi, area, stored)

    def _check(self, model: Model, hi: np.ndarray, area: np.ndarray, stored: np.ndarray) -> Check:
        lay = self.layout
        bad_rows = (self._tags(hi, area) != stored) | ~model.rows_present
        header = None
        for copy in lay.header_rows:
            if not bad_rows[copy].any():
                header = area[copy].reshape(-1)[: lay.header_len].tobytes()
                break
        expected = self._header(model.side)
        bad_side = ~model.side_present.copy()
        manifest_ok = header is not None and header[:SIDE_TAG_BYTES] == expected[:SIDE_TAG_BYTES]
        for i in range(len(lay.side)):
            sl = slice(SIDE_TAG_BYTES * (i + 1), SIDE_TAG_BYTES * (i + 2))
            if header is None or header[sl] != expected[sl]:
                bad_side[i] = True
        recoverable = all(self._group_can_decode(g, bad_rows, bad_side)[0] for g in lay.groups)
        return Check(bad_rows, bad_side, header is not None, manifest_ok, recoverable)

    def _erased(self, group: Group, bad_rows: np.ndarray, bad_side: np.ndarray) -> np.ndarray:
        lay = self.layout
        bad_shard = np.zeros(lay.total_shards, dtype=bool)
        bad_shard[: lay.rows] = bad_rows
        for item, bad in zip(lay.side, bad_side, strict=True):
            if bad:
                bad_shard[item.shard_start : item.shard_start + item.shards] = True
        return bad_shard[group.shards]

    def _group_can_decode(self, group: Group, bad_rows: np.ndarray, bad_side: np.ndarray) -> tuple[bool, list[bool]]:
        erased = int(self._erased(group, bad_rows, bad_side).sum())
        if erased == 0:
            return True, [True] * len(self._layers())
        layers = [
            group.parity > 0 and int((~bad_rows[rows]).sum()) >= erased
            for rows, _ in unit_locations(self.layout, group)
        ]
        return all(layers), layers

    def restore(self, model: Model) -> tuple[Model, np.ndarray]:
        """Undo tampering where the code allows. Returns the model and the rows not restored."""
        lay = self.layout
        hi, area, stored = self._read(model.rows)
        found = self._check(model, hi, area, stored)
        data = self._shards(hi, model.side)
        shard_known = np.ones(lay.total_shards, dtype=bool)
        for group in lay.groups:
            erased = self._erased(group, found.bad_rows, found.bad_side)
            if erased.any() and not self._decode_group(data, area, group, erased, found):
                shard_known[group.shards[erased]] = False
        side = [
            restored if known else payload
            for restored, payload, known in zip(
                self._side_payloads(data),
                model.side,
                [shard_known[i.shard_start : i.shard_start + i.shards].all() for i in lay.side],
                strict=True,
            )
        ]
        new_hi = bits.unpack_high(self._logical(data[: lay.rows]), lay.k)
        rebuilt = self.embed(Model(new_hi, side, model.rows_present, model.side_present))
        exact = self._exact_rows(shard_known)
        out = model.rows.copy()
        fixed = found.bad_rows & exact
        out[fixed] = rebuilt[fixed]
        partial = found.bad_rows & ~exact
        out[partial] = new_hi[partial] | (model.rows[partial] & self._mask)
        present = model.rows_present | fixed
        side_present = model.side_present | np.array(
            [shard_known[i.shard_start : i.shard_start + i.shards].all() for i in lay.side], dtype=bool
        )
        return Model(out, side, present, side_present), partial

    def _decode_group(self, data, area, group: Group, erased: np.ndarray, found: Check) -> bool:
        """Restore a group's erased shards in `data`; False if some layer is beyond the bound."""
        locations = unit_locations(self.layout, group)
        whole = np.logical_and.reduce([~found.bad_rows[rows] for rows, _ in locations])
        if group.parity and whole.sum() >= erased.sum():  # whole parity shards suffice: one call
            parity = np.zeros((group.parity, self._shard_len), dtype=np.uint8)
            for layer, (rows, offsets) in zip(self._layer_bytes, locations, strict=True):
                parity[:, layer] = self._units(area, rows, offsets, layer.size)
            self._decode(data, group, erased, np.flatnonzero(whole), parity[whole], None)
            return True
        _, layer_ok = self._group_can_decode(group, found.bad_rows, found.bad_side)
        for layer, ok, (rows, offsets) in zip(self._layer_bytes, layer_ok, locations, strict=True):
            if ok:
                alive = np.flatnonzero(~found.bad_rows[rows])
                units = self._units(area, rows[alive], offsets[alive], layer.size)
                self._decode(data, group, erased, alive, units, layer)
        return all(layer_ok)

    @staticmethod
    def _units(area: np.ndarray, rows: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
        if width == area.shape[1]:
            return area[rows]
        return area[rows[:, None], offsets[:, None] + np.arange(width)[None, :]]

    def _decode(self, data, group: Group, erased, alive, units, layer: np.ndarray | None) -> None:
        """Decode erased shards of a group from the shards kept and the parity `units` of the
        `alive` parity shards: whole shards (layer None) or the symbols at byte positions `layer`."""
        if layer is None:
            compact, width = slice(None), self._shard_len
            kept = data[group.shards[~erased]]
        else:  # move the layer's symbols to the front of a shard of whole 64-byte chunks
            nsym = layer.size // 2
            compact, width = self._sym_bytes[:nsym].reshape(-1), 64 * -(-nsym // 32)
            kept = data[group.shards[~erased]][:, layer]

        def shards(values: np.ndarray) -> list[bytes]:
            buf = np.zeros((values.shape[0], width), dtype=np.uint8)
            buf[:, compact] = values
            return _rows_as_bytes(buf)

        originals = dict(zip(np.flatnonzero(~erased).tolist(), shards(kept), strict=True))
        recovery = dict(zip(alive.tolist(), shards(units), strict=True))
        restored = reed_solomon_leopard.decode(len(group.shards), group.parity, originals, recovery)
        target = slice(None) if layer is None else layer
        for pos, chunk in restored.items():
            data[group.shards[pos], target] = np.frombuffer(chunk, dtype=np.uint8)[compact]

    def _exact_rows(self, shard_known: np.ndarray) -> np.ndarray:
        """Rows whose every bit the rebuilt model gets right: own data and own parity area known."""
        lay = self.layout
        exact = shard_known[: lay.rows].copy()
        for group in lay.groups:
            if not shard_known[group.shards].all():
                exact[group.storage] = False
        if not shard_known[lay.rows :].all():
            exact[lay.header_rows.reshape(-1)] = False
        return exact


def _rows_as_bytes(rows: np.ndarray) -> list[bytes]:
    """One bytes object per row (slicing one blob is much faster than a tobytes per row)."""
    blob = rows.tobytes()
    n = rows.shape[1]
    return [blob[i : i + n] for i in range(0, len(blob), n)]
