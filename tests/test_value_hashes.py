"""Hashes of Arrow values (ids' buckets, carried values' digests): equal values hash alike however
the arrays are sliced; a changed value changes its row's digest."""

from __future__ import annotations

import decimal
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from transforms import value_hashes as value_hashes_module
from transforms.value_hashes import row_digests, value_hashes

ARRAYS = [
    pa.array(["a", "bb", None, "", "a"]),
    pa.array([b"a", b"bb", None, b"", b"a"], pa.large_binary()),
    pa.array([1, 2, None, 0, 1], pa.int64()),
    pa.array([True, False, None, True, True]),
    pa.array([1_000, 2_000, None, 3_000, 1_000], pa.timestamp("ns", "UTC")),
    pa.array([decimal.Decimal("1.50"), decimal.Decimal("2"), None, decimal.Decimal("0"), decimal.Decimal("1.5")]),
    pa.array([[1, 2], [3], None, [], [1, 2]], pa.list_(pa.int64())),
    pa.array([[1.0, 2.0], [2.0, 1.0], None, [0.0, 0.0], [1.0, 2.0]], pa.list_(pa.float32(), 2)),
    pa.array([{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, None, {"a": None, "b": None}, {"a": 1, "b": "x"}]),
    pa.array([[("k", 1)], [("k", 2)], None, [], [("k", 1)]], pa.map_(pa.string(), pa.int64())),
    pa.array([[["a"]], [["a"], None], None, [], [["a"]]]),
    pa.array(["a", "bb", None, "", "a"]).dictionary_encode(),
    pa.array(["a", "bb", None, "", "a"], pa.string_view()),
    pa.array([1, 2, None, 0, 1], pa.run_end_encoded(pa.int32(), pa.int64())),
]


@pytest.mark.parametrize("values", ARRAYS, ids=[str(a.type) for a in ARRAYS])
def test_equal_values_hash_alike_however_sliced_and_different_ones_differ(values):
    hashes = value_hashes(values)
    for start in range(len(values)):
        for length in range(len(values) - start + 1):
            assert (value_hashes(values.slice(start, length)) == hashes[start : start + length]).all()
    assert hashes[0] == hashes[4]  # equal values
    distinct = {repr(v) for v in values.slice(0, 4).to_pylist()}  # a value, another, a null, an empty one
    assert len({int(h) for h in hashes[:4]}) == len(distinct)
    assert (value_hashes(pa.chunked_array([values.slice(0, 2), values.slice(2)])) == hashes).all()


@pytest.mark.parametrize(
    "values",
    [
        pa.array([b"\x01" * 16, b"\x02" * 16, None, b"\x01" * 16], pa.binary(16)).cast(pa.uuid()),
        pa.array(['{"a": 1}', "[]", None, '{"a": 1}']).cast(pa.json_()),
    ],
    ids=["uuid", "json"],
)
def test_arrows_own_extension_types_hash_as_their_storage(values):
    """Arrow's uuid and json columns were hashed through each value's Python repr, one call per row, and
    differently from the same bytes read back without the extension type."""
    assert value_hashes(values).tolist() == value_hashes(values.storage).tolist()
    assert value_hashes(values)[0] == value_hashes(values)[3] != value_hashes(values)[1]


def test_views_and_run_end_encoded_values_hash_as_their_plain_forms():
    texts = pa.array(["a", "bb", None, "a"])
    numbers = pa.array([1, 1, None, 2])
    assert value_hashes(texts.cast(pa.string_view())).tolist() == value_hashes(texts).tolist()
    assert (
        value_hashes(pa.array([b"a", None], pa.binary_view())).tolist() == value_hashes(pa.array([b"a", None])).tolist()
    )
    assert value_hashes(pc.run_end_encode(numbers)).tolist() == value_hashes(numbers).tolist()


def test_a_row_digest_changes_with_any_value_of_its_columns_and_with_their_order():
    table = pa.table({"title": ["a", "a", "a", "b"], "rank": pa.array([1, 1, 2, 1], pa.int32()), "other": [9, 8, 7, 6]})
    digests = row_digests(table, ["title", "rank"])
    assert digests[0] == digests[1] and len(set(digests[1:].tolist())) == 3
    assert (row_digests(table, ["rank", "title"]) != digests).all()
    assert (row_digests(table.slice(1), ["title", "rank"]) == digests[1:]).all()
    assert (row_digests(table, []) == np.zeros(4, np.uint64)).all()


@pytest.mark.parametrize("block", [1, 3, 64])
def test_values_longer_than_a_block_hash_as_in_one_block(monkeypatch, block):
    rng = np.random.default_rng(0)
    values = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (0, 1, 200, 5, 0, 97)]
    arrays = [pa.array([*values, None], pa.binary()), pa.array([[1, 2, 3] * 40, [], None, [7]])]
    whole = [value_hashes(a) for a in arrays]
    monkeypatch.setattr(value_hashes_module, "SEGMENT_BLOCK", block)
    for array, expected in zip(arrays, whole, strict=True):
        assert (value_hashes(array) == expected).all()
        assert (value_hashes(array.slice(2)) == expected[2:]).all()


def test_a_huge_value_hashes_in_bounded_memory():
    huge = pa.array([b"x" * 30_000_000, b"y"], pa.large_binary())  # a 30 MB cell
    tracemalloc.start()
    try:
        value_hashes(huge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20  # it took 905 MiB when every byte had its own uint64 terms and powers


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (pa.array(["", "a", "hello world", None]), [0, 106652627936468, 8411338293335110903, 7640891576956012808]),
        (
            pa.array([[1, 2], [], None, [3]], pa.list_(pa.int64())),
            [9591955462696416877, 0, 7640891576956012808, 15342027328231564056],
        ),
        (pa.array([[1.0, 2.0], [0.5, -1.0]], pa.list_(pa.float32(), 2)), [6681659198350383820, 15551044034072119377]),
    ],
    ids=["strings", "lists", "fixed_size_lists"],
)
def test_hashes_are_the_ones_earlier_runs_computed(values, expected):
    """Pinned from the implementation before hashing went block by block: equal values hash alike on
    every worker and every night, whichever release computed them."""
    assert [int(h) for h in value_hashes(values)] == expected
