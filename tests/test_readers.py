"""The default output files, as they are, in DuckDB, LanceDB, pandas and Polars."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow.parquet as pq
import pytest

from samples.knowledge_base import make_rows
from tests.conftest import read_manifest, run_cli, write_parquet


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    rows = make_rows(20, seed=4)
    write_parquet(root / "kb.parquet", id=rows["id"].to_pylist(), text=rows["text"].to_pylist())
    result = run_cli("--input", str(root / "kb.parquet"), "--output", str(root / "out"))
    assert result.returncode == 0, result.stderr
    return root / "out"


def _expected_top(run_dir, query_row: int) -> tuple[np.ndarray, list[str]]:
    names = read_manifest(run_dir)["files"]["embeddings"]
    table = pq.read_table([run_dir / name for name in names])
    vectors = table["embedding"].combine_chunks().values.to_numpy().reshape(table.num_rows, -1)
    ids = table["id"].to_pylist()
    query = vectors[query_row]
    return query, [ids[i] for i in np.argsort(-(vectors @ query), kind="stable")[:5]]


def test_duckdb_queries_the_vectors_as_they_are(run_dir):
    """DuckDB 2.0 reads a Parquet list of fixed size as FLOAT[] (its own FLOAT[384] files too):
    its list functions take it as it is; array functions need `::FLOAT[384]`."""
    duckdb = pytest.importorskip("duckdb")
    query, expected = _expected_top(run_dir, 3)
    files = [str(run_dir / name) for name in read_manifest(run_dir)["files"]["embeddings"]]  # as the README says
    connection = duckdb.connect()
    found = connection.execute("SELECT typeof(embedding) FROM read_parquet($files) LIMIT 1", {"files": files})
    assert found.fetchone()[0] == "FLOAT[]"
    for order in (
        "list_cosine_similarity(embedding, $query)",
        "array_cosine_similarity(embedding::FLOAT[384], $query::FLOAT[384])",
    ):
        found = connection.execute(
            f"SELECT id FROM read_parquet($files) ORDER BY {order} DESC LIMIT 5",
            {"files": files, "query": query.tolist()},
        ).fetchall()
        assert [row[0] for row in found] == expected


def test_lancedb_takes_the_files_as_a_table(run_dir, tmp_path):
    query, expected = _expected_top(run_dir, 7)
    names = read_manifest(run_dir)["files"]["embeddings"]
    table = lancedb.connect(str(tmp_path / "db")).create_table("kb", data=pq.read_table([run_dir / n for n in names]))
    hits = table.search(query, vector_column_name="embedding").distance_type("cosine").limit(5).to_list()
    assert [hit["id"] for hit in hits] == expected


def test_vectors_and_hashes_are_written_without_dictionary_encoding(run_dir):
    names = read_manifest(run_dir)["files"]["embeddings"]
    metadata = pq.ParquetFile(run_dir / names[0]).metadata
    encodings = {
        metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i).encodings
        for i in range(metadata.num_columns)
    }
    assert set(encodings) == {"id", "content_hash", "embedding.list.item"}
    assert not any("DICTIONARY" in encoding for codes in encodings.values() for encoding in codes)


def test_pandas_and_polars_read_the_vectors_as_they_are(run_dir):
    pandas = pytest.importorskip("pandas")
    polars = pytest.importorskip("polars")
    query, expected = _expected_top(run_dir, 5)
    files = [run_dir / name for name in read_manifest(run_dir)["files"]["embeddings"]]
    frame = pandas.concat([pandas.read_parquet(path) for path in files], ignore_index=True)
    scores = np.stack(frame["embedding"].to_numpy()) @ query
    assert frame["id"].to_numpy()[np.argsort(-scores, kind="stable")[:5]].tolist() == expected
    table = polars.read_parquet(files)
    assert table.schema["embedding"] == polars.Array(polars.Float32, 384)  # fixed-size, as written
    scores = table["embedding"].to_numpy() @ query
    assert table["id"].to_numpy()[np.argsort(-scores, kind="stable")[:5]].tolist() == expected


def test_polars_reads_back_every_category_of_shards_whose_enums_differ(tmp_path):
    """Polars notes an Enum's categories in the field's metadata, a list's or struct's items too; the first
    shard's notes were copied into the outputs, and Polars read a category the second shard added since as
    null ('archived' came back empty), or could not read the nested columns at all."""
    polars = pytest.importorskip("polars")
    for n, (ids, status, categories) in enumerate(
        [([1, 2], ["draft", "live"], ["draft", "live"]), ([3, 4], ["archived", "live"], ["draft", "live", "archived"])]
    ):
        enum = polars.Series(status, dtype=polars.Enum(categories))
        frame = polars.DataFrame({"id": ids, "text": [f"text {i}" for i in ids], "status": enum})
        frame = frame.with_columns(
            tags=polars.concat_list(polars.col("status")), rec=polars.struct(polars.col("status").alias("e"))
        )
        frame.write_parquet(tmp_path / f"part-{n}.parquet")
    out = tmp_path / "out"
    result = run_cli("--input", str(tmp_path / "*.parquet"), "--output", str(out), "--carry_columns", "status,tags,rec")
    assert result.returncode == 0, result.stderr
    files = [out / name for name in read_manifest(out)["files"]["embeddings"]]
    read = polars.read_parquet(files).sort("id")
    assert read["status"].cast(polars.String).to_list() == ["draft", "live", "archived", "live"]
    assert read["tags"].cast(polars.List(polars.String)).to_list() == [["draft"], ["live"], ["archived"], ["live"]]
    assert read["rec"].struct.field("e").cast(polars.String).to_list() == ["draft", "live", "archived", "live"]
