"""Carried values as JSON text, in Arrow: PostgreSQL's jsonb columns and Pinecone's metadata take them.

NaN and infinities, which JSON cannot hold, become null; bytes are lowercase hex, UUIDs their dashed
text, times text, durations seconds as text, maps with string keys objects.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.inputs import is_json, is_uuid, type_family

# JSON escapes for the characters a JSON string may not hold as they are.
_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")] + [
    (chr(code), f"\\u{code:04x}") for code in range(32) if chr(code) not in "\n\r\t"
]


def quoted(texts: pa.Array) -> pa.Array:
    for raw, escaped in _ESCAPES:
        if pc.any(pc.match_substring(texts, raw)).as_py():
            texts = pc.replace_substring(texts, raw, escaped)
    return pc.binary_join_element_wise('"', texts, '"', "")


def json_values(column: pa.Array) -> pa.Array:
    """Each value as JSON text, null where the value is null (or a float that JSON cannot hold). Bytes
    are lowercase hex (PostgreSQL's `encode(b, 'hex')`); maps with string keys are JSON objects, other
    maps lists of `[key, value]` pairs; nested values take their members' forms, in Arrow throughout."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return json_values(column.dictionary_decode())
    if is_uuid(kind):
        return pc.binary_join_element_wise('"', uuid_text(column), '"', "")
    if is_json(kind):  # JSON already (DuckDB checks it; PostgreSQL's jsonb does too, naming the row)
        return column.storage.cast(pa.string())
    if type_family(kind) == "string":
        return quoted(column.cast(pa.string()))
    if is_bytes(kind):
        return pc.binary_join_element_wise('"', hex_text(column), '"', "")
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "true", "false")
    if pa.types.is_integer(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.string())
    if pa.types.is_floating(kind):
        return pc.if_else(pc.is_finite(column), column.cast(pa.string()), pa.scalar(None, pa.string()))
    if pa.types.is_duration(kind):  # seconds, exactly ("1.500000"): Arrow's text is a count of an unnamed unit
        return quoted(_seconds(column.cast(pa.int64()), {"s": 0, "ms": 3, "us": 6, "ns": 9}[kind.unit]))
    if pa.types.is_temporal(kind):
        return quoted(column.cast(pa.string()))
    if pa.types.is_struct(kind):
        members = [
            pc.binary_join_element_wise(json_key(field.name), _member(child), ":")
            for field, child in zip(kind, column.flatten(), strict=True)
        ]
        text = (
            pc.binary_join_element_wise("{", pc.binary_join_element_wise(*members, ","), "}", "") if members else "{}"
        )
        return pc.if_else(column.is_valid(), text, pa.scalar(None, pa.string()))
    if pa.types.is_fixed_size_list(kind):
        return json_values(column.cast(pa.list_(kind.value_field)))
    if pa.types.is_map(kind):
        if type_family(kind.key_type) == "string":
            return _joined(
                column, pc.binary_join_element_wise(json_values(column.keys), _member(column.items), ":"), "{}"
            )
        pairs = pc.binary_join_element_wise("[", json_values(column.keys), ",", _member(column.items), "]", "")
        return _joined(column, pairs, "[]")
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _joined(column, _member(column.values), "[]")
    # Anything else (extension, union and view-list types): Python's JSON, one value at a time.
    texts = [
        None if value is None else json.dumps(_finite(value), default=_text, allow_nan=False)
        for value in column.to_pylist()
    ]
    return pa.array(texts, pa.string())


def _finite(value):
    """A nested value with NaN and infinities as None: JSON has no form for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _seconds(counts: pa.Array, scale: int) -> pa.Array:
    """Counts of 10**-scale seconds as decimal text, digit by digit from integers (a decimal's own
    text turns to exponents below a microsecond: "0E-9")."""
    magnitude = pc.abs(counts)
    whole = pc.divide(magnitude, 10**scale)  # integers: the quotient, truncated
    text = whole.cast(pa.string())
    if scale:
        fraction = pc.subtract(magnitude, pc.multiply(whole, 10**scale)).cast(pa.string())
        text = pc.binary_join_element_wise(text, pc.utf8_lpad(fraction, scale, "0"), ".")
    return pc.if_else(pc.less(counts, 0), pc.binary_join_element_wise("-", text, ""), text)


def _member(column: pa.Array) -> pa.Array:
    """A nested member's JSON text, `null` for a null; decimals as text, exactly (a JSON reader's number is a float)."""
    texts = quoted(column.cast(pa.string())) if pa.types.is_decimal(column.type) else json_values(column)
    return pc.fill_null(texts, "null")


def _joined(column: pa.Array, elements: pa.Array, brackets: str) -> pa.Array:
    """Each list's (or map's) element texts joined between `brackets`, null where the list is."""
    lists = (pa.LargeListArray if pa.types.is_large_list(column.type) else pa.ListArray).from_arrays(
        column.offsets, elements
    )
    text = pc.binary_join_element_wise(brackets[0], pc.binary_join(lists, ","), brackets[1], "")
    return pc.if_else(column.is_valid(), text, pa.scalar(None, pa.string()))


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_UUID_GROUPS = ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))  # hex digits of each dash-separated group


def json_key(name: str) -> str:
    return quoted(pa.array([name])).to_pylist()[0]


def hex_text(column: pa.Array) -> pa.Array:
    """Each value's bytes as lowercase hex digits, in numpy (Arrow has no kernel for it)."""
    column = column.cast(pa.large_binary())
    offsets = np.frombuffer(column.buffers()[1], np.int64)[column.offset : column.offset + len(column) + 1]
    data = column.buffers()[2]
    data = (np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8))[offsets[0] : offsets[-1]]
    digits = np.empty(2 * len(data), np.uint8)
    digits[0::2], digits[1::2] = _HEX_DIGITS[data >> 4], _HEX_DIGITS[data & 15]
    texts = pa.LargeStringArray.from_buffers(
        len(column), pa.py_buffer((offsets - offsets[0]) * 2), pa.py_buffer(digits)
    )
    return pc.if_else(column.is_valid(), texts, pa.scalar(None, pa.large_string())).cast(pa.string())


def uuid_text(column: pa.Array) -> pa.Array:
    """UUIDs in their 8-4-4-4-12 lowercase hex form, as PostgreSQL and Python write them."""
    digits = hex_text(column.storage)
    parts = [pc.utf8_slice_codeunits(digits, start, stop) for start, stop in _UUID_GROUPS]
    return pc.binary_join_element_wise(*parts, "-")


def is_bytes(kind: pa.DataType) -> bool:
    """Values written as lowercase hex: binaries of any width, fixed-size ones too."""
    return type_family(kind) == "binary" or pa.types.is_fixed_size_binary(kind)


def _text(value) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)
