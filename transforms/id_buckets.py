"""Spread ids over buckets by a hash of their bytes, in numpy: the same id lands in the same bucket
on every worker and every night, whatever its type, with no Python per id."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1's 64-bit prime, as a polynomial base
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _powers(count: int) -> np.ndarray:
    return np.cumprod(np.full(max(count, 1), _MULTIPLIER, dtype=np.uint64))  # wraps modulo 2**64


def _variable_width(ids: pa.Array) -> np.ndarray:
    width = np.int64 if pa.types.is_large_string(ids.type) or pa.types.is_large_binary(ids.type) else np.int32
    _, offsets, data = ids.buffers()
    offsets = np.frombuffer(offsets, width)[ids.offset : ids.offset + len(ids) + 1].astype(np.int64)
    lengths = np.diff(offsets)
    first = offsets[0]
    flat = np.frombuffer(data if data is not None else b"", np.uint8)[first : offsets[-1]].astype(np.uint64)
    position = np.arange(len(flat)) - np.repeat(offsets[:-1] - first, lengths)
    terms = flat * _powers(int(lengths.max(initial=0)))[position]
    hashes = lengths.astype(np.uint64)
    filled = lengths > 0
    if filled.any():
        hashes[filled] += np.add.reduceat(terms, (offsets[:-1] - first)[filled])
    return hashes


def _fixed_width(ids: pa.Array, width: int) -> np.ndarray:
    data = np.frombuffer(ids.buffers()[1], np.uint8)[ids.offset * width : (ids.offset + len(ids)) * width]
    return (data.reshape(len(ids), width).astype(np.uint64) * _powers(width)).sum(axis=1, dtype=np.uint64)


def _is_variable_width(kind: pa.DataType) -> bool:
    return any(
        check(kind)
        for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    )


def bucketable(kind: pa.DataType) -> bool:
    """Whether ids of this type can be bucketed (and sorted): strings, binaries and fixed-width scalars."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if _is_variable_width(kind) or pa.types.is_boolean(kind):
        return True
    fixed = pa.types.is_primitive(kind) or pa.types.is_decimal(kind) or pa.types.is_fixed_size_binary(kind)
    return fixed and kind.bit_width % 8 == 0


def id_buckets(ids: pa.Array, buckets: int) -> np.ndarray:
    """Bucket number in [0, buckets) of each (non-null) id, as int64."""
    if buckets == 1 or len(ids) == 0:
        return np.zeros(len(ids), dtype=np.int64)
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if pa.types.is_boolean(ids.type):
        ids = pc.cast(ids, pa.int8())
    if pa.types.is_float32(ids.type) or pa.types.is_float64(ids.type):  # -0.0 equals 0.0: give both 0.0's bytes
        ids = pc.add(ids, pa.scalar(0.0, ids.type))
    if _is_variable_width(ids.type):
        hashes = _variable_width(ids)
    else:
        hashes = _fixed_width(ids, ids.type.bit_width // 8)
    hashes = (hashes ^ (hashes >> np.uint64(29))) * _MIX
    return ((hashes >> np.uint64(32)) % np.uint64(buckets)).astype(np.int64)
