"""Carried values as JSON text (`pipeline.json_text`): what PostgreSQL's jsonb columns take, and Pinecone's
metadata where its forms allow."""

from __future__ import annotations

import datetime
import json

import pyarrow as pa
import pytest

from pipeline.json_text import json_values


def json_rows(table: pa.Table, **parse) -> list[dict]:
    """Each row's values parsed from their JSON text, the null ones left out."""
    texts = {name: json_values(table.column(name).combine_chunks()).to_pylist() for name in table.column_names}
    return [
        {name: json.loads(values[row], **parse) for name, values in texts.items() if values[row] is not None}
        for row in range(table.num_rows)
    ]


def test_values_are_valid_json_for_odd_values_and_nulls_are_left_out():
    table = pa.table(
        {
            "text": ['say "hi"\\n', "tab\tnew\nline \x01 ü 🚀", None],
            "score": [1.5, float("nan"), -2.0],
            "ok": [True, False, None],
            "at": pa.array([datetime.datetime(2026, 12, 2, 7, 30), None, datetime.datetime(1999, 1, 1)]),
            "tags": [["a", "b"], [], None],
            "weights": [[0.5, float("nan")], None, [float("inf")]],
            "n": pa.array([1, None, 3], pa.int64()),
        }
    )
    strict = {"parse_constant": lambda name: pytest.fail(f"{name} is not JSON")}
    rows = json_rows(table, **strict)
    assert rows == [
        {
            "text": 'say "hi"\\n',
            "score": 1.5,
            "ok": True,
            "at": "2026-12-02 07:30:00.000000",
            "tags": ["a", "b"],
            "weights": [0.5, None],
            "n": 1,
        },
        {"text": "tab\tnew\nline \x01 ü 🚀", "ok": False, "tags": []},
        {"score": -2.0, "at": "1999-01-01 00:00:00.000000", "weights": [None], "n": 3},
    ]


def test_bytes_are_hex_and_maps_with_text_keys_objects_at_any_depth():
    """Bytes as lowercase hex (PostgreSQL's `encode(b, 'hex')`, as the loader's bytea text reads) and
    a map with text keys as a JSON object, inside lists and structs too, not Python's reprs or a
    list of pairs; a slice of the table converts as the whole does."""
    table = pa.table(
        {
            "blob": pa.array([b"\x00\xff", b"hi", None, b""], pa.binary()),
            "digest": pa.array([b"\x01\x02", b"\xab\xcd", b"\x00\x00", None], pa.binary(2)),
            "labels": pa.array(
                [[("k", "v"), ("q", 'say "x"')], [], None, [("z", None)]], pa.map_(pa.string(), pa.string())
            ),
            "files": pa.array([[("a", b"\xfe")], None, [("b", b"")], []], pa.map_(pa.string(), pa.binary())),
            "codes": pa.array([[(1, "one")], [(2, None)], None, []], pa.map_(pa.int32(), pa.string())),
            "parts": pa.array([[b"\x00\x01", None], [], None, [b"\x7f"]], pa.list_(pa.binary())),
            "doc": pa.array(
                [{"raw": b"\x10", "n": 1}, {"raw": None, "n": None}, None, {"raw": b"", "n": 4}],
                pa.struct([("raw", pa.binary()), ("n", pa.int64())]),
            ),
            "took": pa.array([1_500_000, None, 0, -1], pa.duration("us")),
            "waited": pa.array([0, 1, None, 1_500], pa.duration("ns")),  # a decimal's text turns to "1E-9"
        }
    )
    expected = [
        {
            "blob": "00ff",
            "digest": "0102",
            "labels": {"k": "v", "q": 'say "x"'},
            "files": {"a": "fe"},
            "codes": [[1, "one"]],
            "parts": ["0001", None],
            "doc": {"raw": "10", "n": 1},
            "took": "1.500000",
            "waited": "0.000000000",
        },
        {"blob": "6869", "digest": "abcd", "labels": {}, "codes": [[2, None]], "parts": [],
         "doc": {"raw": None, "n": None}, "waited": "0.000000001"},
        {"digest": "0000", "files": {"b": ""}, "took": "0.000000"},
        {"blob": "", "labels": {"z": None}, "files": {}, "codes": [], "parts": ["7f"], "doc": {"raw": "", "n": 4},
         "took": "-0.000001", "waited": "0.000001500"},
    ]  # fmt: skip
    assert json_rows(table) == expected
    assert json_rows(table.slice(1, 2)) == (expected[1:3])
