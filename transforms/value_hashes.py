"""64-bit hashes of Arrow values, computed in numpy over the arrays' buffers: no Python per value.

Equal values of one type hash equally on every worker and every night, however the arrays are
sliced or chunked. Used to spread ids over buckets and to tell whether a row's carried values
changed since the previous run. The hash is polynomial modulo 2**64: ordinary different values
collide about once in 2**64, but inputs built for it can collide (long Thue-Morse-like strings),
so it detects changes in data, not tampering.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1's 64-bit prime, as a polynomial base
_MIX = np.uint64(0x9E3779B97F4A7C15)
_NULL = np.uint64(0x6A09E667F3BCC908)  # the hash of every null
SEGMENT_BLOCK = 1 << 20  # terms of variable-width values hashed at a time


def _powers(count: int) -> np.ndarray:
    return np.cumprod(np.full(max(count, 1), _MULTIPLIER, dtype=np.uint64))  # wraps modulo 2**64


def mixed(hashes: np.ndarray) -> np.ndarray:
    """Spread each hash's bits over all 64 (polynomial hashes of short values differ in low bits)."""
    return (hashes ^ (hashes >> np.uint64(29))) * _MIX


def _segments(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Polynomial hash of each segment flat[offsets[i]:offsets[i + 1]] (terms widened to uint64), plus its
    length.

    Taken SEGMENT_BLOCK terms at a time, so that the temporaries stay a few tens of MiB however long
    one value is (a 100 MB cell would otherwise take 40 bytes per byte): a segment begun in an earlier
    block has its sum over this one scaled by the multiplier's power of the terms already taken.
    """
    flat = flat[offsets[0] : offsets[-1]]
    offsets = offsets.astype(np.int64) - offsets[0]
    hashes = np.diff(offsets).astype(np.uint64)
    powers = _powers(min(len(flat), SEGMENT_BLOCK))
    for start in range(0, len(flat), SEGMENT_BLOCK):
        stop = min(start + SEGMENT_BLOCK, len(flat))
        first = int(np.searchsorted(offsets, start, side="right")) - 1  # the segment holding flat[start]
        last = int(np.searchsorted(offsets, stop, side="left"))  # segments [first, last) meet this block
        bounds = np.clip(offsets[first : last + 1], start, stop) - start
        lengths = np.diff(bounds)
        position = np.arange(stop - start) - np.repeat(bounds[:-1], lengths)
        terms = flat[start:stop].astype(np.uint64) * powers[position]
        filled = lengths > 0
        sums = np.add.reduceat(terms, bounds[:-1][filled])
        if offsets[first] < start:  # its first terms were in earlier blocks
            sums[:1] *= np.uint64(pow(int(_MULTIPLIER), int(start - offsets[first]), 1 << 64))
        hashes[first:last][filled] += sums
    return hashes


def _variable_width(values: pa.Array) -> np.ndarray:
    large = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    _, offsets, data = values.buffers()
    offsets = np.frombuffer(offsets, np.int64 if large else np.int32)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(data if data is not None else b"", np.uint8)[offsets[0] : offsets[-1]]
    return _segments(data, offsets - offsets[0])


def _fixed_width(values: pa.Array, width: int) -> np.ndarray:
    data = np.frombuffer(values.buffers()[1], np.uint8)[values.offset * width : (values.offset + len(values)) * width]
    return (data.reshape(len(values), width).astype(np.uint64) * _powers(width)).sum(axis=1, dtype=np.uint64)


def is_variable_width(kind: pa.DataType) -> bool:
    return any(
        check(kind)
        for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    )


def is_fixed_width(kind: pa.DataType) -> bool:
    fixed = pa.types.is_primitive(kind) or pa.types.is_decimal(kind) or pa.types.is_fixed_size_binary(kind)
    return fixed and not pa.types.is_boolean(kind) and kind.bit_width % 8 == 0


def _unnested(values: pa.Array) -> np.ndarray:
    """Hashes of non-null values (nulls' slots hold anything) of any type."""
    kind = values.type
    if pa.types.is_dictionary(kind):
        return value_hashes(values.dictionary_decode())
    if isinstance(kind, pa.BaseExtensionType):  # Arrow's own (uuid, json) as well as Python-defined ones
        return value_hashes(values.storage)
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        return _variable_width(values.cast(pa.large_string() if pa.types.is_string_view(kind) else pa.large_binary()))
    if pa.types.is_run_end_encoded(kind):
        return value_hashes(pc.run_end_decode(values))
    if pa.types.is_boolean(kind):
        return _fixed_width(pc.cast(values, pa.int8()), 1)
    if pa.types.is_null(kind):
        return np.full(len(values), _NULL, np.uint64)
    if is_variable_width(kind):
        return _variable_width(values)
    if is_fixed_width(kind):
        return _fixed_width(values, kind.bit_width // 8)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        return _segments(mixed(value_hashes(values.values)), values.offsets.to_numpy())
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size  # .values ignores the slice; .flatten() would drop null lists' slots
        child = values.values.slice(values.offset * size, len(values) * size)
        return _segments(mixed(value_hashes(child)), np.arange(len(values) + 1) * size)
    if pa.types.is_struct(kind):
        hashes = np.full(len(values), kind.num_fields, np.uint64)
        for power, field in zip(_powers(kind.num_fields)[: kind.num_fields], values.flatten(), strict=True):
            hashes += mixed(value_hashes(field)) * power
        return hashes
    # List views and unions: Parquet holds neither; hashed through their text form.
    return _variable_width(pa.array([repr(value) for value in values.to_pylist()], pa.large_string()))


def value_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One uint64 per value; every null hashes alike."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.zeros(0, np.uint64)
    hashes = _unnested(values)
    if values.null_count:
        hashes = np.where(pc.is_valid(values).to_numpy(zero_copy_only=False), hashes, _NULL)
    return hashes


def row_digests(table: pa.Table | pa.RecordBatch, names: list[str]) -> np.ndarray:
    """One uint64 per row over the values of columns `names`, in that order."""
    digests = np.full(table.num_rows, len(names), np.uint64)
    for power, name in zip(_powers(len(names))[: len(names)], names, strict=True):
        digests += mixed(value_hashes(table.column(name))) * power
    return digests
