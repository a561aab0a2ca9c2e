"""`python -m pipeline.load pinecone`: a run (or its change set) as Pinecone import files."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoder.quantize import Quantizer
from pipeline.load import LoadError, Run, export_pinecone, read_run
from pipeline.pinecone_files import IMPORT_SCHEMA, PART_NAME, Export, import_table, metadata_json, pinecone_ids
from tests.conftest import read_manifest, run_loader
from tests.test_load_pgvector import DAY_ONE, day_one, dot_night, embed_night, parquet_rows  # noqa: F401 (fixtures)


def export(run_dir, output, *options: str) -> subprocess.CompletedProcess:
    return run_loader("pinecone", "--output", str(output), *options, str(run_dir))


def test_a_snapshot_becomes_id_values_and_json_metadata(day_one, tmp_path):  # noqa: F811
    result = export(day_one, tmp_path / "ns")
    assert result.returncode == 0, result.stderr
    assert "30 vectors of run" in result.stdout
    assert result.stdout.strip().endswith("to import into an index of metric cosine")
    files = sorted((tmp_path / "ns").glob("part-*.parquet"))
    holding_rows = [n for n in read_manifest(day_one)["files"]["embeddings"] if pq.read_metadata(day_one / n).num_rows]
    assert len(files) == len(holding_rows) == 1  # the reused rows' file of a first night holds none
    table = pq.read_table(files)
    assert table.schema == IMPORT_SCHEMA
    expected = parquet_rows(day_one)
    assert sorted(table["id"].to_pylist()) == sorted(expected)
    for row in table.to_pylist():
        title, digest, vector = expected[row["id"]]
        assert np.array_equal(np.array(row["values"], np.float32), vector)
        assert json.loads(row["metadata"]) == {"id": row["id"], "title": title, "content_hash": digest}


def test_ids_join_the_chunk_only_for_passages():
    """Without passages a `chunk` column is carried metadata: two rows must not become `a#1` and `a#2`."""
    table = pa.table({"id": ["a", "b"], "chunk": pa.array([1, 2], pa.int32())})
    assert pinecone_ids(table, "id", passages=True).to_pylist() == ["a#1", "b#2"]
    assert pinecone_ids(table, "id", passages=False).to_pylist() == ["a", "b"]


def test_uuid_and_bytes_ids_are_written_as_their_text_forms():
    """A UUID id's text in its dashed form, bytes as hex (not UTF-8 necessarily: casting them failed the export
    with "Invalid UTF8 payload"), in the id and in the metadata alike."""
    uuids = pa.array([uuid.UUID(int=255).bytes, uuid.UUID("7428beef-a535-432b-9d69-d7a2726732e3").bytes], pa.binary(16))
    for ids, texts in [
        (uuids.cast(pa.uuid()), ["00000000-0000-0000-0000-0000000000ff", "7428beef-a535-432b-9d69-d7a2726732e3"]),
        (pa.array([b"\xff\x00", b"ok"]), ["ff00", "6f6b"]),
    ]:
        table = pa.table({"id": ids, "chunk": pa.array([0, 3], pa.int32())})
        assert pinecone_ids(table, "id", passages=False).to_pylist() == texts
        assert pinecone_ids(table, "id", passages=True).to_pylist() == [f"{texts[0]}#0", f"{texts[1]}#3"]
        assert [json.loads(m)["id"] for m in metadata_json(table, ["id"]).to_pylist()] == texts


def test_a_json_columns_values_are_metadata_as_json_and_one_that_does_not_parse_is_refused_naming_it(tmp_path):
    """Parquet's JSON type (DuckDB's JSON columns), read as extension<arrow.json>, went in as JSON strings
    holding the text. They go in as the JSON they hold; a value that is not JSON (pyarrow does not check)
    is refused naming its file, column and id, and no part file is left for Pinecone to import."""
    rows = {"id": ["a", "b", "c"], "text": ["one", "two", "three"]}
    good = embed_night(tmp_path, "good", {**rows, "j": pa.array(['{"k": [1, 2]}', '"s"', None], pa.json_())},
                       carried=("--carry_columns", "j"))  # fmt: skip
    assert export(good, tmp_path / "ns").returncode == 0
    metadata = pq.read_table(sorted((tmp_path / "ns").glob("part-*.parquet"))).column("metadata").to_pylist()
    parsed = sorted((json.loads(m)["id"], json.loads(m).get("j")) for m in metadata)
    assert parsed == [("a", '{"k": [1, 2]}'), ("b", "s"), ("c", None)]  # Pinecone takes no objects: their text
    bad = embed_night(tmp_path, "bad", {**rows, "j": pa.array(["{}", "NaN", "[1]"], pa.json_())},
                      carried=("--carry_columns", "j"))  # fmt: skip
    result = export(bad, tmp_path / "ns-bad")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad / 'embeddings-00000-of-00001.parquet'}: column 'j' of id 'b': 'NaN' is not JSON (NaN is not JSON)"
    )
    assert list((tmp_path / "ns-bad").glob("*")) == []


def test_a_night_whose_rows_were_all_reused_exports_no_empty_part_file(day_one, tmp_path):  # noqa: F811
    """The night's embeddings file holds no rows (every vector was reused): it gets no part file, and
    an earlier export's part of that number, left in the folder, is removed."""
    unchanged = embed_night(tmp_path, "same", DAY_ONE, "--previous", str(day_one))
    manifest = read_manifest(unchanged)
    assert (manifest["rows_embedded"], manifest["rows_reused"]) == (0, 30)
    files = manifest["files"]["embeddings"]
    rows = [pq.read_metadata(unchanged / name).num_rows for name in files]
    assert 0 in rows and sum(rows) == 30
    assert export(day_one, tmp_path / "ns").returncode == 0  # an earlier night's parts in the folder
    result = export(unchanged, tmp_path / "ns")
    assert result.returncode == 0, result.stderr
    parts = sorted((tmp_path / "ns").glob("part-*.parquet"))  # this export's, the earlier one's removed
    assert len({p.name.rsplit("-", 1)[0] for p in parts}) == 1
    assert [p.name.rsplit("-", 1)[1] for p in parts] == [f"{n:05d}.parquet" for n, count in enumerate(rows) if count]
    assert all(pq.read_metadata(p).num_rows for p in parts)
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 30


def test_a_night_that_deleted_most_of_its_previous_runs_ids_is_not_exported_unless_allowed(day_one, tmp_path):  # noqa: F811
    """Shards written with empty texts upstream: every row is rejected and deleted. Imported into the
    night's new namespace, readers would switch to an empty one."""
    emptied = embed_night(tmp_path, "emptied", {**DAY_ONE, "text": [""] * 30}, "--previous", str(day_one))
    manifest = read_manifest(emptied)
    assert (manifest["rows_deleted"], manifest["rows_rejected"]) == (30, 30)
    result = export(emptied, tmp_path / "ns")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'ns'}: run {manifest['run_id']} would delete 30 of the previous run's ({day_one}) 30 ids "
        "(100%, more than --max_deleted_share 0.5); nothing was exported. The run read 30 rows and rejected 30 "
        "(30 empty_text): check its input, or export it with --max_deleted_share 1 if those deletions are meant"
    )
    assert not (tmp_path / "ns").exists()
    older = tmp_path / "older"  # the previous run written by a version that kept no file checks: counted alike
    shutil.copytree(day_one, older)
    kept = {k: v for k, v in read_manifest(older).items() if k not in ("file_checks", "run_id")}
    (older / "manifest.json").write_text(json.dumps(kept))
    after = read_manifest(emptied)
    after["previous"]["path"] = str(older)
    (emptied / "manifest.json").write_text(json.dumps(after))
    result = export(emptied, tmp_path / "ns")
    assert result.returncode == 1 and f"would delete 30 of the previous run's ({older}) 30 ids" in result.stderr
    allowed = export(emptied, tmp_path / "ns", "--max_deleted_share", "1")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith(f"{tmp_path / 'ns'}: 0 vectors of run {manifest['run_id']}")


def test_a_folder_of_an_earlier_export_is_reused_and_any_other_refused(day_one, tmp_path):  # noqa: F811
    """Pinecone imports every file of the folder: an earlier export's extra part files would add stale vectors."""
    folder = tmp_path / "ns"
    assert export(day_one, folder).returncode == 0
    [part] = folder.iterdir()
    assert PART_NAME.fullmatch(part.name)
    (folder / "part-00009.parquet").write_bytes(part.read_bytes())  # an earlier version's export's last file
    result = export(day_one, f"{folder}//")  # spelled with slashes after it: the same folder
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("metric cosine (replacing an earlier export; 2 of its files removed)")
    [again] = folder.iterdir()
    assert again.name != part.name and PART_NAME.fullmatch(again.name)
    assert pq.read_table(again).num_rows == 30
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("kept")
    nested = folder / "older" / again.name  # an export's part in a subfolder: Pinecone imports it too
    nested.parent.mkdir()
    nested.write_bytes(again.read_bytes())
    for other in (day_one, tmp_path / "other", folder):  # the run's own folder; folders holding another file
        result = export(day_one, other)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith(f"error: --output {other}: holds ")
        assert "Pinecone would import them too: pass an empty folder, or one only this command wrote" in result.stderr
    assert f"({nested})" in result.stderr
    assert not list(day_one.glob("part-*")) and [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet")) == [f"older/{again.name}", again.name]
    with pytest.raises(LoadError, match=f"^--output {tmp_path}/other/notes.txt: cannot write there \\(.*File exists"):
        export_pinecone(read_run(str(day_one)), str(tmp_path / "other" / "notes.txt"))  # a file, not a folder


def test_a_folder_named_with_a_glob_character_is_refused_leaving_the_folder_it_would_match(day_one, tmp_path):  # noqa: F811
    """The earlier export is found by matching the folder's files: `ns?1` matched `ns 1`, whose export was removed."""
    assert export(day_one, tmp_path / "ns 1").returncode == 0
    [part] = (tmp_path / "ns 1").iterdir()
    result = export(day_one, tmp_path / "ns?1")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"error: --output '{tmp_path}/ns?1' holds a glob character (* ? or [): the export finds the folder's earlier "
        "files by a pattern, which would match other folders' too; choose a folder name without them\n"
    )
    assert list((tmp_path / "ns 1").iterdir()) == [part]
    assert not (tmp_path / "ns?1").exists()


def test_a_dot_product_models_vectors_go_to_an_index_of_metric_dotproduct(dot_night, tmp_path):  # noqa: F811
    result = export(dot_night, tmp_path / "ns")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(
        "30 vectors of run " + read_manifest(dot_night)["run_id"] + " to import into an index of metric dotproduct"
    )


def test_a_model_compared_by_manhattan_distance_is_refused_naming_the_run(tmp_path):
    run = Run(str(tmp_path / "run"), {"model": {"similarity": "manhattan"}}, {"embeddings": []})
    with pytest.raises(LoadError) as refused:
        export_pinecone(run, str(tmp_path / "ns"))
    assert str(refused.value) == (
        f"{tmp_path / 'run'}: the model compares vectors by manhattan distance, which no Pinecone index metric "
        "(cosine, dotproduct, euclidean) computes"
    )
    assert not (tmp_path / "ns").exists()


def embeddings_file(path, ids: list[str], vectors: list[list[float]], **carried: pa.Array) -> str:
    """An embeddings file as the job writes one: id, carried columns, content hash, vector."""
    table = pa.table(
        {
            "id": ids,
            **carried,
            "content_hash": [f"h{n}" for n in range(len(ids))],
            "embedding": pa.array(vectors, pa.list_(pa.float32(), len(vectors[0]))),
        }
    )
    pq.write_table(table, path)
    return str(path)


def test_metadata_takes_only_the_forms_pinecone_stores():
    """Pinecone's metadata holds strings, numbers, booleans and lists of strings, and no nulls: a list of
    strings loses its null items, and any other nested value (a list of numbers, a struct, a map, a JSON
    column's object or array) goes as its JSON text, a string, which Pinecone stores as it is."""
    table = pa.table(
        {
            "tags": pa.array([["a", None, "b"], [None], None], pa.list_(pa.string())),
            "codes": pa.array([["x", "z"], ["y", None], None], pa.list_(pa.large_string(), 2)),
            "scores": [[0.5, None], [], None],
            "doc": pa.array([{"n": 1, "s": "t"}, None, {"n": None, "s": "u"}]),
            "labels": pa.array([[("k", "v")], [], None], pa.map_(pa.string(), pa.string())),
            "j": pa.array(['{"k": [1, 2]}', '["p", null, "q"]', "null"], pa.json_()),
            "k": pa.array(['"s"', "[1, 2]", "true"], pa.json_()),
            "n": [1, 2, None],
        }
    )
    rows = [json.loads(text) for text in metadata_json(table, table.column_names).to_pylist()]
    assert rows == [
        {"tags": ["a", "b"], "codes": ["x", "z"], "scores": "[0.5,null]", "doc": '{"n":1,"s":"t"}',
         "labels": '{"k":"v"}', "j": '{"k": [1, 2]}', "k": "s", "n": 1},
        {"tags": [], "codes": ["y"], "scores": "[]", "labels": "{}", "j": ["p", "q"], "k": "[1, 2]", "n": 2},
        {"doc": '{"n":null,"s":"u"}', "k": True},
    ]  # fmt: skip
    for row in rows:
        for value in row.values():
            assert isinstance(value, str | int | float | bool) or all(isinstance(item, str) for item in value)
    sliced = [json.loads(text) for text in metadata_json(table.slice(1, 2), table.column_names).to_pylist()]
    assert sliced == rows[1:]


def test_numbers_a_64_bit_float_would_change_go_to_pinecone_as_their_text():
    """Pinecone stores metadata numbers as 64-bit floats: a snowflake id (about 2^60), an unsigned 64-bit
    value or a decimal of more digits came back with other last digits, matching no filter on its value."""
    table = pa.table(
        {
            "id": pa.array([2**53, 2**53 + 1, -(2**53) - 1], pa.int64()),
            "big": pa.array([2**64 - 1, 7, None], pa.uint64()),
            "price": pa.array(
                [Decimal("0.10"), Decimal("12345678901234567.89"), Decimal("-99999999999999999999.99")],
                pa.decimal128(22, 2),
            ),
            "small": pa.array([Decimal("1.5"), None, Decimal("-2.25")], pa.decimal128(5, 2)),
        }
    )
    rows = [json.loads(text) for text in metadata_json(table, table.column_names).to_pylist()]
    assert rows == [
        {"id": 2**53, "big": "18446744073709551615", "price": 0.1, "small": 1.5},
        {"id": "9007199254740993", "big": 7, "price": "12345678901234567.89"},
        {"id": "-9007199254740993", "price": "-99999999999999999999.99", "small": -2.25},
    ]


def test_records_pinecone_refuses_are_left_out_and_counted_by_reason(tmp_path):
    """Pinecone refuses a vector of zeros (a static model's for a text of no known token), an id empty, holding
    a NUL character or over 512 characters, and metadata over 40,960 bytes (a long text carried): the export
    leaves them out, says how many and which, and writes the rest. An empty id and one holding a NUL were
    written as records, which Pinecone's import refuses."""
    long_id, long_text = "i" * 513, "t" * 41_000
    ids = ["ok", "zero", long_id, "big", "zero-too", "", "a\x00b"]
    vectors = [[1.0, 0.0], [0.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    titles = ["a", "b", "c", long_text, "e", "f", "g"]
    path = embeddings_file(tmp_path / "e.parquet", ids, vectors, title=titles)
    export = Export()
    table = import_table(pq.read_table(path), "id", Quantizer("float32"), 2, passages=False, export=export)
    assert table.column("id").to_pylist() == ["ok"]
    assert export.left_out == {
        "a vector of zeros": (2, ["zero", "zero-too"]),
        "an empty id": (1, [""]),
        "an id holding a NUL character": (1, ["a\x00b"]),
        "an id over 512 characters": (1, [long_id]),
        "metadata over 40,960 bytes": (1, ["big"]),
    }
    run = Run(str(tmp_path), {"run_id": "r1", "columns": {"id": "id"}, "model": {"dim": 2}}, {"embeddings": [path]})
    assert export_pinecone(run, str(tmp_path / "ns")) == (
        f"{tmp_path / 'ns'}: 1 vectors of run r1 to import into an index of metric cosine; left out, as Pinecone "
        f"refuses them: 2 with a vector of zeros ('zero', 'zero-too'); 1 with an empty id (''); 1 with an id "
        f"holding a NUL character ('a\\x00b'); 1 with an id over 512 characters "
        f"({long_id!r}); 1 with metadata over 40,960 bytes ('big')"
    )


def test_an_export_that_fails_midway_leaves_the_earlier_one_whole(tmp_path):
    """Part files were numbered alike from one export to the next: one that failed on its second file left its
    first beside the earlier export's others, two nights in one folder, which Pinecone would import together."""
    folder, block = tmp_path / "ns", {"dim": 2}
    night = [embeddings_file(tmp_path / f"n1-{n}.parquet", [f"old{n}"], [[1.0, 0.0]]) for n in range(3)]
    run = Run(str(tmp_path), {"run_id": "n1", "columns": {"id": "id"}, "model": block}, {"embeddings": night})
    export_pinecone(run, str(folder))
    earlier = sorted(path.name for path in folder.iterdir())
    assert len(earlier) == 3
    bad = pa.array(["NaN"], pa.json_())
    files = [
        embeddings_file(tmp_path / "n2-0.parquet", ["new0"], [[1.0, 0.0]], j=pa.array(["1"], pa.json_())),
        embeddings_file(tmp_path / "n2-1.parquet", ["new1"], [[1.0, 0.0]], j=bad),
        embeddings_file(tmp_path / "n2-2.parquet", ["new2"], [[1.0, 0.0]], j=pa.array(["2"], pa.json_())),
    ]
    run = Run(str(tmp_path), {"run_id": "n2", "columns": {"id": "id"}, "model": block}, {"embeddings": files})
    with pytest.raises(ValueError, match="n2-1.parquet: column 'j' of id 'new1': 'NaN' is not JSON"):
        export_pinecone(run, str(folder))
    assert sorted(path.name for path in folder.iterdir()) == earlier
    assert sorted(pq.read_table(sorted(folder.iterdir())).column("id").to_pylist()) == ["old0", "old1", "old2"]


def test_an_export_whose_file_changed_after_its_check_writes_nothing(day_one, tmp_path):  # noqa: F811
    """Read again after its check, a file a run rewrote meanwhile went to Pinecone as the checked run's."""
    night = shutil.copytree(day_one, tmp_path / "night")
    run = read_run(str(night))
    file = run.files["embeddings"][0]
    pq.write_table(pq.read_table(file).slice(1), file)  # a row fewer, as a rerun may write it
    with pytest.raises(LoadError, match=f"^{file}: changed since it was checked against manifest.json"):
        export_pinecone(run, str(tmp_path / "ns"))
    assert not list((tmp_path / "ns").glob("*"))
