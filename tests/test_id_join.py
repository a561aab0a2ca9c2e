"""The Arrow id join against a plain-Python statement of its rules, and duplicate ids at scale."""

from __future__ import annotations

import hashlib
import pickle
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.util import assert_that, equal_to

from schemas.outputs import CONTENT_HASH_COLUMN, EMBEDDING_COLUMN
from tests.conftest import read_manifest, run_cli, write_parquet
from transforms.id_buckets import bucketable, id_buckets
from transforms.incremental import (
    BATCH,
    CURRENT,
    DECISIONS,
    PREVIOUS,
    REUSED,
    _Apply,
    _Claim,
    _previous_claims,
    _Settle,
)
from transforms.passages import UnitBatch
from transforms.read import ShardBatch
from transforms.spill import Spilled, spill
from transforms.validate import REJECTED, STATS

DIM = 3
REJECTS = pa.schema(
    [
        ("id", pa.string()),
        ("source_file", pa.string()),
        ("row_number", pa.int64()),
        ("reason", pa.string()),
        ("column", pa.string()),
    ]
)
SCHEMA = pa.schema(
    [("id", pa.string()), (CONTENT_HASH_COLUMN, pa.string()), (EMBEDDING_COLUMN, pa.list_(pa.float32(), DIM))]
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _unit_batches(rng: np.random.Generator) -> list[UnitBatch]:
    """Three files of 300 rows in batches of 100; ids drawn from 200 (many repeat, across files too)."""
    batches = []
    for path in ("mem://c.parquet", "mem://a.parquet", "mem://b.parquet"):
        for first in range(0, 300, 100):
            ids = [f"doc-{n}" for n in rng.integers(0, 200, 100)]
            texts = [f"text {n}" for n in rng.integers(0, 3, 100)]
            batch = pa.RecordBatch.from_pydict(
                {"id": ids, CONTENT_HASH_COLUMN: [_digest(t) for t in texts], "text": texts}
            )
            batches.append(UnitBatch(f"{path}#{first}#0", path, np.arange(first, first + 100), batch))
    return batches


def _previous(rng: np.random.Generator) -> pa.RecordBatch:
    """Yesterday: 150 of the 200 ids plus 30 gone today, each with one of the texts."""
    ids = [f"doc-{n}" for n in range(50, 200)] + [f"gone-{n}" for n in range(30)]
    hashes = [_digest(f"text {n}") for n in rng.integers(0, 3, len(ids))]
    vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)
    return pa.RecordBatch.from_arrays([pa.array(ids), pa.array(hashes), embedding], schema=SCHEMA)


def _run_join(units: list[UnitBatch], previous: pa.RecordBatch, buckets: int, spill_dir: str | None) -> tuple:
    """The join's DoFns in the order Beam runs them, grouping by key as CoGroupByKey does.
    Returns counts, rejects, {batch key: units to embed} and the reused rows."""
    passages = "chunk" in units[0].batch.schema.names
    claim = _Claim("id", REJECTS, buckets, spill_dir, passages)
    settle = _Settle(REJECTS, True, passages, SCHEMA.field(EMBEDDING_COLUMN).type, spill_dir)
    counts, rejects, grouped, decisions = Counter(), [], {}, {}

    def route(item, keyed: dict, side: str) -> None:
        if isinstance(item, TaggedOutput):
            counts.update(item.value) if item.tag == STATS else rejects.append(item.value)
        else:
            assert isinstance(item[1], Spilled) == (spill_dir is not None)
            keyed.setdefault(item[0], {CURRENT: [], PREVIOUS: [], DECISIONS: []})[side].append(item[1])

    for unit_batch in units:
        for item in claim.process(unit_batch):
            route(item, grouped, CURRENT)
    for item in _previous_claims(
        ShardBatch("mem://previous", np.arange(previous.num_rows), previous), "id", buckets, spill_dir, False
    ):
        route(item, grouped, PREVIOUS)
    for bucket in grouped.items():
        for item in settle.process(bucket):
            route(item, decisions, DECISIONS)
    embed, reused = {}, []
    for unit_batch in units:
        given = decisions.get(unit_batch.key, {DECISIONS: []})[DECISIONS]
        batch = spill(unit_batch.batch, spill_dir)
        for item in _Apply(SCHEMA).process((unit_batch.key, {BATCH: [batch], DECISIONS: given})):
            if isinstance(item, TaggedOutput):
                assert item.tag == REUSED
                reused.append(item.value)
            else:
                embed[unit_batch.key] = item
    return counts, pa.Table.from_batches(rejects, REJECTS), embed, reused


def _reference(units: list[UnitBatch], previous: pa.RecordBatch) -> dict:
    """The join's rules, one Python object per row."""
    documents: dict = {}
    for unit_batch in units:
        rows = unit_batch.batch.to_pylist()
        for place, (row, number) in enumerate(zip(rows, unit_batch.row_numbers.tolist(), strict=True)):
            documents.setdefault(row["id"], []).append(
                (unit_batch.path, number, unit_batch.key, place, row[CONTENT_HASH_COLUMN])
            )
    yesterday = {row["id"]: (row[CONTENT_HASH_COLUMN], row[EMBEDDING_COLUMN]) for row in previous.to_pylist()}
    kept, reused, duplicates = set(), {}, set()
    for id_, claims in documents.items():
        first = min(claims)[:2]
        duplicates |= {(id_, path, row) for path, row, *_ in claims if (path, row) != first}
        for path, row, key, place, digest in claims:
            if (path, row) == first:
                kept.add((key, place))
                if id_ in yesterday and yesterday[id_][0] == digest:
                    reused[(key, place)] = yesterday[id_][1]
    return {
        "kept": kept,
        "reused": reused,
        "duplicates": duplicates,
        "deleted": len(set(yesterday) - set(documents)),
    }


@pytest.mark.parametrize("buckets,spilled", [(1, False), (4, False), (37, False), (4, True)])
def test_arrow_join_gives_what_the_rules_say(buckets, spilled, tmp_path):
    rng = np.random.default_rng(7)
    units, previous = _unit_batches(rng), _previous(rng)
    expected = _reference(units, previous)
    counts, rejects, embed, reused = _run_join(units, previous, buckets, str(tmp_path) if spilled else None)
    assert list(tmp_path.iterdir()) == []  # every spilled value was read once and deleted

    assert {(r["id"], r["source_file"], r["row_number"]) for r in rejects.to_pylist()} == expected["duplicates"]
    assert rejects.num_rows == len(expected["duplicates"]) > 100  # each duplicate row rejected once
    assert counts["rejected:duplicate_id"] == len(expected["duplicates"])
    by_key = {u.key: u.batch for u in units}
    found_reused = {}
    for batch in reused:
        for row in batch.to_pylist():
            found_reused.setdefault(row["id"], []).append(row[EMBEDDING_COLUMN])
    expected_reused = {}
    for (key, place), vector in expected["reused"].items():
        expected_reused.setdefault(by_key[key].column("id")[place].as_py(), []).append(vector)
    assert found_reused == expected_reused and len(found_reused) > 20
    to_embed = sorted(expected["kept"] - set(expected["reused"]))
    expected_embed = {}
    for key, place in to_embed:  # in each batch's own order
        expected_embed.setdefault(key, []).append(by_key[key].column("text")[place].as_py())
    assert {key: batch.column("text").to_pylist() for key, batch in embed.items()} == expected_embed
    assert len(to_embed) > 20
    assert counts["rows_deleted"] == expected["deleted"] >= 30
    assert (counts["rows_reused"], counts["rows_embedded"]) == (len(expected_reused), len(to_embed))
    assert (counts["passages"], counts["passages_reused"]) == (len(expected["kept"]), len(expected["reused"]))


def test_an_id_repeated_in_a_batch_sends_its_first_and_edge_documents():
    rows = 4096
    batch = pa.RecordBatch.from_pydict({"id": ["same"] * rows, CONTENT_HASH_COLUMN: [_digest("x")] * rows})
    outputs = list(_Claim("id", REJECTS, 16, None, False).process(UnitBatch("k", "mem://f", np.arange(rows), batch)))
    claims = [item for item in outputs if not isinstance(item, TaggedOutput)]
    rejects = [item.value for item in outputs if isinstance(item, TaggedOutput) and item.tag == REJECTED]
    assert [(bucket, part.table.num_rows) for bucket, part in claims] == [(id_buckets(pa.array(["same"]), 16)[0], 2)]
    assert claims[0][1].table.column("row").to_pylist() == [0, rows - 1]  # the last may go on in the next batch
    assert sum(r.num_rows for r in rejects) == rows - 2


def test_a_duplicate_document_across_two_batches_is_rejected_once():
    """Row 5 repeats row 3's id; its passages go on from one unit batch into the next."""
    digest = _digest("p")
    first = pa.RecordBatch.from_pydict(
        {"id": ["x"] * 3, "chunk": pa.array([0, 0, 1], pa.int32()), CONTENT_HASH_COLUMN: [digest] * 3}
    )
    second = pa.RecordBatch.from_pydict(
        {"id": ["x"] * 2, "chunk": pa.array([2, 3], pa.int32()), CONTENT_HASH_COLUMN: [digest] * 2}
    )
    units = [
        UnitBatch("f#0#0", "mem://f", np.array([3, 5, 5]), first),
        UnitBatch("f#0#1", "mem://f", np.array([5, 5]), second),
    ]
    counts, rejects, embed, reused = _run_join(units, _previous(np.random.default_rng(0)), 4, None)
    assert rejects.to_pylist() == [
        {"id": "x", "source_file": "mem://f", "row_number": 5, "reason": "duplicate_id", "column": None}
    ]
    assert counts["rejected:duplicate_id"] == 1
    assert (counts["passages"], counts["rows_embedded"]) == (1, 1)
    assert {key: batch.num_rows for key, batch in embed.items()} == {"f#0#0": 1}


def test_dictionary_encoded_ids_are_joined_by_their_values():
    batch = pa.RecordBatch.from_pydict(
        {"id": pa.array(["b", "a", "b", "c"]).dictionary_encode(), CONTENT_HASH_COLUMN: [_digest("t")] * 4}
    )
    claim = _Claim("id", REJECTS, 4, None, False)
    outputs = list(claim.process(UnitBatch("k", "mem://f", np.arange(4), batch)))
    claims = [part for _, part in (item for item in outputs if not isinstance(item, TaggedOutput))]
    assert sorted(i for part in claims for i in part.table.column("id").to_pylist()) == ["a", "b", "c"]
    rejects = [item.value for item in outputs if isinstance(item, TaggedOutput) and item.tag == REJECTED]
    assert [r.to_pylist() for r in rejects] == [
        [{"id": "b", "source_file": "mem://f", "row_number": 2, "reason": "duplicate_id", "column": None}]
    ]


def test_id_buckets_do_not_depend_on_how_ids_are_sliced():
    ids = pa.array([f"doc-{n}" for n in range(10_000)] + [""])
    buckets = id_buckets(ids, 16)
    assert (id_buckets(ids.slice(4000, 5000), 16) == buckets[4000:9000]).all()
    assert np.bincount(buckets, minlength=16).min() > 500
    numbers = pa.array(np.arange(10_000, dtype=np.int64))
    assert (id_buckets(numbers.slice(7), 16) == id_buckets(numbers, 16)[7:]).all()
    assert np.bincount(id_buckets(numbers, 16), minlength=16).min() > 500
    assert not bucketable(pa.list_(pa.int64())) and bucketable(pa.timestamp("ns")) and bucketable(pa.large_string())


def test_one_id_a_hundred_thousand_times_keeps_the_first(tmp_path, model_path):
    for shard in range(4):
        write_parquet(tmp_path / "in" / f"{shard}.parquet", id=["same"] * 25_000, text=[f"row {shard}"] * 25_000)
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "out")
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_embedded"]) == (100_000, 1, 1)
    assert manifest["rejected_by_reason"] == {"duplicate_id": 99_999}
    kept = pq.read_table(tmp_path / "out" / manifest["files"]["embeddings"][0])
    rejected = pq.read_table([tmp_path / "out" / name for name in manifest["files"]["rejected"]])
    assert kept.num_rows == 1 and rejected.num_rows == 99_999
    first = (str(tmp_path / "in" / "0.parquet"), 0)
    assert first not in set(zip(rejected["source_file"].to_pylist(), rejected["row_number"].to_pylist(), strict=True))


@pytest.mark.parametrize("changed", [False, True])
def test_each_decision_pickles_only_its_own_rows_and_vectors(changed):
    """A bucket's decisions are slices of one table: pickled as slices, each would carry the whole
    bucket's vectors, and a night would shuffle (or spill) them once per unit batch. A unit to embed
    has no vector to carry: its decision is its place (README: what is shuffled per row)."""
    dim, rows, per = 64, 2000, 100
    ids = [f"doc-{n}" for n in range(rows)]
    hashes = [_digest(i) for i in ids]
    units = [
        UnitBatch(f"f#{s}#0", "mem://f", np.arange(s, s + per), pa.RecordBatch.from_pydict(
            {"id": ids[s : s + per], CONTENT_HASH_COLUMN: hashes[s : s + per]}))
        for s in range(0, rows, per)
    ]  # fmt: skip
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(rows * dim, np.float32)), dim)
    yesterday = [_digest(h) for h in hashes] if changed else hashes  # every text changed, or none
    previous = pa.RecordBatch.from_pydict({"id": ids, CONTENT_HASH_COLUMN: yesterday, EMBEDDING_COLUMN: vectors})
    claim = _Claim("id", REJECTS, 4, None, False)
    settle = _Settle(REJECTS, True, False, pa.list_(pa.float32(), dim), None)
    row_bytes = 5 if changed else 5 + dim * 4  # its place, whether its vector is there, and that vector
    with beam.Pipeline() as pipeline:
        claims = pipeline | "Units" >> beam.Create(units) | beam.ParDo(claim).with_outputs(REJECTED, STATS, main="c")
        earlier = (
            pipeline
            | "Previous" >> beam.Create([ShardBatch("mem://p", np.arange(rows), previous)])
            | beam.FlatMap(_previous_claims, "id", 4, None, False)
        )
        sizes = (
            {CURRENT: claims.c, PREVIOUS: earlier}
            | beam.CoGroupByKey()
            | beam.ParDo(settle)
            | beam.Map(lambda keyed: (keyed[1].num_rows, len(pickle.dumps(keyed[1], pickle.HIGHEST_PROTOCOL))))
            | beam.Map(lambda sized: sized[1] < 2 * sized[0] * row_bytes + 4096)
            | beam.combiners.Count.PerElement()
        )
        assert_that(sizes, equal_to([(True, 80)]))  # 20 unit batches, each with rows in each of 4 buckets
