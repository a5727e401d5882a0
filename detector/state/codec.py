"""Per-sensor state as bytes: the compact, versioned format of checkpoints and changelogs.

One record holds everything a sensor needs to resume where it stopped (hidden
state of every layer, normalisation and calibration statistics, run lengths,
alert state, last timestamp), as the raw rows of the pool's blocks behind a
small header:

    magic "HSST" | format u16 | channels u16 | state_size u32 | layout u32 | model 16 bytes | rows...

`layout` is a checksum of where each field's bytes lie in a row (block, offset, width) and `model` the first 16 bytes
of the weights' SHA-256. A record with another format, layout, state size or
channel count cannot be read and is refused (`Decoded.ok` is False for it). A
record written under other weights keeps its statistics (they describe the
sensor, not the model) but the engine drops its hidden state and forecast, so
rolling out a new model does not throw away what was learned about each sensor.
All records of one pool have the same size, so decoding many is one `np.frombuffer`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.state.pool import Rows, StatePool

MAGIC = b"HSST"
FORMAT_VERSION = 3
"""3: a sensor's channel-name set id (`channel_set`) in its rows; 2: the layout checksum follows the bytes (fields
by block and offset); 1 hashed them sorted by name. Records of another format are refused (the sensor starts
fresh)."""
_HEADER = struct.Struct("<4sHHII16s")
_MODEL_AT = _HEADER.size - 16


@dataclass(frozen=True)
class Decoded:
    """Records read back: rows (in pool layout) of the readable ones, and which came from the same weights."""

    rows: Rows
    same_model: np.ndarray  # per readable record
    ok: np.ndarray  # per input record: readable by this pool


class StateCodec:
    """Encodes and decodes the state rows of one pool under one model."""

    def __init__(self, pool: StatePool, model_sha256: str) -> None:
        self.pool = pool
        self._specs = pool.block_specs()
        self._model = bytes.fromhex(model_sha256[:32].ljust(32, "0"))
        layout = zlib.crc32(repr(pool.byte_layout()).encode() + repr(self._specs).encode())
        self._header = _HEADER.pack(MAGIC, FORMAT_VERSION, pool.channels, pool.state_size, layout, self._model)
        self.record_size = _HEADER.size + sum(w * t.itemsize for w, t in self._specs.values())

    def encode(self, rows: Rows) -> list[bytes]:
        """One record per gathered row."""
        parts = [np.ascontiguousarray(rows.blocks[b]).view(np.uint8) for b in self._specs]
        body = np.concatenate(parts, axis=1)
        return [self._header + row.tobytes() for row in body]

    def decode(self, records: Sequence[bytes]) -> Decoded:
        """Rows from the records this pool can read."""
        prefix = self._header[:_MODEL_AT]
        ok = np.fromiter(
            (len(r) == self.record_size and r[:_MODEL_AT] == prefix for r in records), dtype=bool, count=len(records)
        )
        good = [r for r, fine in zip(records, ok.tolist()) if fine]
        same_model = np.fromiter((r[_MODEL_AT : _HEADER.size] == self._model for r in good), dtype=bool, count=len(good))
        raw = np.frombuffer(b"".join(good), dtype=np.uint8).reshape(len(good), self.record_size)
        blocks, at = {}, _HEADER.size
        for b, (width, dtype) in self._specs.items():
            size = width * dtype.itemsize
            blocks[b] = raw[:, at : at + size].copy().view(dtype).reshape(len(good), width)
            at += size
        return Decoded(self.pool.rows(blocks), same_model, ok)
