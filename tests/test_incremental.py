"""Nightly runs with --previous: reuse, re-embed, delete, duplicates."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoder import PooledEncoder, read_model_folder
from samples.knowledge_base import make_rows
from tests.conftest import read_manifest, run_cli, run_clis, write_parquet
from transforms.output_owner import OutputOwner

DAY_ONE = make_rows(40, seed=3)
IDS = DAY_ONE["id"].to_pylist()
TEXTS = DAY_ONE["text"].to_pylist()
CHANGED, DELETED, NEW = IDS[:5], IDS[5:9], ["new-1", "new-2", "new-3"]


def read_vectors(output) -> dict:
    table = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    ids = table["id"].to_pylist()
    assert len(set(ids)) == len(ids)
    vectors = table["embedding"].combine_chunks().values.to_numpy().reshape(len(ids), -1)
    return dict(zip(ids, vectors, strict=True))


@pytest.fixture(scope="module")
def day_one(tmp_path_factory):
    root = tmp_path_factory.mktemp("nightly")
    write_parquet(root / "day1" / "kb.parquet", id=IDS, text=TEXTS, title=[f"t{i}" for i in range(40)])
    result = run_cli(
        "--input", str(root / "day1" / "kb.parquet"), "--output", str(root / "out1"), "--carry_columns", "title"
    )
    assert result.returncode == 0, result.stderr
    return root


def day_two(root):
    """5 texts changed, 4 rows deleted, 3 new, one title changed with its text kept, one id twice."""
    keep = [i for i in range(40) if IDS[i] not in DELETED]
    ids = [IDS[i] for i in keep] + NEW
    texts = ["Edited: " + TEXTS[i] if IDS[i] in CHANGED else TEXTS[i] for i in keep] + ["brand new page"] * 3
    titles = ["retitled" if IDS[i] == IDS[20] else f"t{i}" for i in keep] + ["n"] * 3
    write_parquet(root / "day2" / "a.parquet", id=ids, text=texts, title=titles)
    write_parquet(root / "day2" / "b.parquet", id=[IDS[30]], text=["a second row with a known id"], title=["dup"])
    return f"{root}/day2/*.parquet"


def test_only_changed_and_new_rows_are_embedded_and_the_rest_reused_bit_for_bit(day_one, model_path):
    pattern = day_two(day_one)
    out2 = day_one / "out2"
    result = run_cli(
        "--input", pattern, "--output", str(out2), "--previous", str(day_one / "out1"), "--carry_columns", "title"
    )
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(out2)
    assert manifest["rows_in"] == 40 - 4 + 3 + 1
    assert (manifest["rows_embedded"], manifest["rows_reused"], manifest["rows_deleted"]) == (8, 31, 4)
    assert manifest["rejected_by_reason"] == {"duplicate_id": 1}
    assert manifest["rows_out"] == 39
    previous_run = read_manifest(day_one / "out1")["run_id"]
    assert manifest["previous"] == {"path": str(day_one / "out1"), "run_id": previous_run, "vectors_reused": True}
    assert "embedded 8 of 40 rows (31 reused, 1 rejected, 1 truncated, 4 deleted)" in result.stdout

    before, after = read_vectors(day_one / "out1"), read_vectors(out2)
    assert sorted(after) == sorted(set(IDS) - set(DELETED) | set(NEW))
    unchanged = sorted(set(IDS) - set(CHANGED) - set(DELETED))
    assert all(after[i].tobytes() == before[i].tobytes() for i in unchanged)
    # Changed rows carry today's vector, not yesterday's.
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu")
    fresh = encoder.encode(["Edited: " + TEXTS[IDS.index(i)] for i in CHANGED]).embeddings
    got = np.stack([after[i] for i in CHANGED])
    assert (got * fresh).sum(axis=1).min() >= 0.9999
    assert all(after[i].tobytes() != before[i].tobytes() for i in CHANGED)

    # Reused rows take today's carried columns; the first row of a duplicated id wins.
    table = pq.read_table(sorted(out2.glob("embeddings-*.parquet")))
    titles = dict(zip(table["id"].to_pylist(), table["title"].to_pylist(), strict=True))
    assert (titles[IDS[20]], titles[IDS[30]]) == ("retitled", "t30")
    rejected = pq.read_table(sorted(out2.glob("rejected-*.parquet"))).to_pylist()
    assert rejected == [
        {
            "id": IDS[30],
            "source_file": str(day_one / "day2" / "b.parquet"),
            "row_number": 0,
            "reason": "duplicate_id",
            "column": None,
        }
    ]

    # The change set: the embedded rows and the retitled one (vector reused, title restated); the deleted ids.
    upserts = pq.read_table([out2 / name for name in manifest["files"]["upserts"]])
    assert upserts.schema == table.schema
    assert sorted(upserts["id"].to_pylist()) == sorted([*CHANGED, *NEW, IDS[20]])
    assert all(name.startswith("changes/upserts-") for name in manifest["files"]["upserts"])
    snapshot = {row["id"]: row for row in table.to_pylist()}
    assert all(row == snapshot[row["id"]] for row in upserts.to_pylist())
    deletes = pq.read_table([out2 / name for name in manifest["files"]["deletes"]])
    assert deletes.column_names == ["id"] and sorted(deletes["id"].to_pylist()) == sorted(DELETED)
    assert manifest["changes"] == {"previous_run_id": previous_run, "upserts": 9, "deletes": 4, "restated": 1}
    assert sum(manifest["file_checks"][name]["rows"] for name in manifest["files"]["upserts"]) == 9


def test_a_changed_model_setting_re_embeds_everything(day_one):
    out = day_one / "out-128"
    result = run_cli(
        "--input",
        str(day_one / "day1" / "kb.parquet"),
        "--output",
        str(out),
        "--previous",
        str(day_one / "out1"),
        "--max_seq_length",
        "128",
    )
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(out)
    assert (manifest["rows_embedded"], manifest["rows_reused"], manifest["rows_deleted"]) == (40, 0, 0)
    assert manifest["previous"]["vectors_reused"] is False
    assert manifest["model"]["fingerprint"] != read_manifest(day_one / "out1")["model"]["fingerprint"]
    assert "re-embedding every row" in result.stderr


def test_previous_without_a_manifest_is_refused(day_one, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for path in (day_one / "out1").glob("*.parquet"):
        (unfinished / path.name).write_bytes(path.read_bytes())
    OutputOwner(str(unfinished), "night-1").take("2026-12-03T02:00:00+00:00")  # as a run still going leaves it
    result = run_cli(
        "--input",
        str(day_one / "day1" / "kb.parquet"),
        "--output",
        str(tmp_path / "out"),
        "--previous",
        str(unfinished),
    )
    assert result.returncode == 1
    assert (
        f"error: --previous {unfinished}: no manifest.json, so it is not a finished run's output (a run that was "
        "killed or failed leaves none; _owner.json names run night-1, started 2026-12-03T02:00:00+00:00 on "
    ) in result.stderr
    assert ": still going, or killed); pass the last finished output, or leave --previous out" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    mistakes = {  # a path with nothing there; the manifest passed instead of its folder
        tmp_path / "no-such-run": "nothing is there: check the path, or leave --previous out",
        day_one / "out1" / "manifest.json": "it is a file, not a folder: pass the folder holding the run's files, "
        "or leave --previous out",
    }
    for previous, why in mistakes.items():
        args = ["--input", str(day_one / "day1" / "kb.parquet"), "--output", str(tmp_path / "out")]
        result = run_cli(*args, "--previous", str(previous))
        assert result.returncode == 1 and result.stderr.splitlines()[-1] == f"error: --previous {previous}: {why}"


def test_output_may_not_be_the_previous_output(day_one):
    out1 = day_one / "out1"
    result = run_cli("--input", str(day_one / "day1" / "kb.parquet"), "--output", str(out1), "--previous", str(out1))
    assert result.returncode == 1
    assert f"error: --output and --previous are both {out1}" in result.stderr
    assert (out1 / "manifest.json").exists()


def test_a_dropped_carried_column_restates_every_row_and_passages_after_rows_make_no_change_set(day_one):
    day1 = str(day_one / "day1" / "kb.parquet")
    dropped = day_one / "out-no-title"
    result = run_cli("--input", day1, "--output", str(dropped), "--previous", str(day_one / "out1"))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(dropped)
    assert (manifest["rows_reused"], manifest["rows_embedded"]) == (40, 0)
    assert manifest["changes"] == {**manifest["changes"], "upserts": 40, "deletes": 0, "restated": 40}
    assert (
        f"WARNING pipeline.plan: --previous {day_one / 'out1'} carried 'title', this run does not: its rows are "
        "written without them (restated in the change set) and a loader drops those columns; pass "
        "--carry_columns title to keep them"
    ) in result.stderr
    passages = day_one / "out-passages"
    result = run_cli(
        "--input", day1, "--output", str(passages), "--previous", str(day_one / "out1"), "--chunk_tokens", "128"
    )
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(passages)
    assert "changes" not in manifest and set(manifest["files"]) == {"embeddings", "rejected"}
    assert not (passages / "changes").exists()
    assert (  # no change set to restate them in
        f"WARNING pipeline.plan: --previous {day_one / 'out1'} carried 'title', this run does not: its rows are "
        "written without them and a loader drops those columns; pass --carry_columns title to keep them"
    ) in result.stderr


def test_a_carried_column_named_as_the_passages_column_is_not_advised_back_the_night_passages_begin(day_one):
    """The night's warning advised `--carry_columns chunk` for yesterday's carried `chunk`, which a run
    with passages refuses: it writes its own `chunk`, the passage's number."""
    shard = write_parquet(day_one / "chunked" / "kb.parquet", id=IDS, text=TEXTS, chunk=[f"c{i}" for i in range(40)])
    rows = run_cli("--input", str(shard), "--output", str(day_one / "out-chunk1"), "--carry_columns", "chunk")
    assert rows.returncode == 0, rows.stderr
    result = run_cli(
        "--input", str(shard), "--output", str(day_one / "out-chunk2"), "--previous", str(day_one / "out-chunk1"),
        "--chunk_tokens", "128",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        f"WARNING pipeline.plan: --previous {day_one / 'out-chunk1'} carried 'chunk', this run does not: its rows "
        "are written without them and a loader drops those columns; this run writes a column 'chunk' of its own"
    ) in result.stderr


def carried_night(root, name: str, number: int, **carried: pa.Array) -> dict:
    """The manifest of night `number` of series `name`: day one's ids and texts with the `carried`
    columns, run against the series' night before (none for night 1)."""
    text = pq.read_table(root / "day1" / "kb.parquet").column("text")
    shard = write_parquet(root / f"{name}{number}" / "kb.parquet", id=IDS, text=text, **carried)
    out = root / f"out-{name}{number}"
    extra = ["--previous", str(root / f"out-{name}{number - 1}")] if number > 1 else []
    result = run_cli("--input", str(shard), "--output", str(out), "--carry_columns", ",".join(carried), *extra)
    assert result.returncode == 0, result.stderr
    return read_manifest(out)


def test_a_carried_column_whose_type_changed_restates_every_row_but_large_string_for_string_does_not(day_one):
    """Digests hash bytes: int8 -1 and uint8 255 are one byte, {author: a} and {owner: a} the same
    bytes; the change set must still carry tonight's values. string and large_string hold the same."""

    def night(number: int, n: pa.Array, title: pa.DataType) -> dict:
        return carried_night(day_one, "typed", number, n=n, title=pa.array(["t"] * 40, title))

    night(1, pa.array([-1] * 40, pa.int8()), pa.string())
    same = night(2, pa.array([-1] * 40, pa.int8()), pa.large_string())
    assert same["changes"] == {**same["changes"], "upserts": 0, "deletes": 0, "restated": 0}
    retyped = night(3, pa.array([255] * 40, pa.uint8()), pa.large_string())
    assert (retyped["rows_reused"], retyped["rows_embedded"]) == (40, 0)
    assert retyped["changes"] == {**retyped["changes"], "upserts": 40, "deletes": 0, "restated": 40}
    upserts = pq.read_table(sorted((day_one / "out-typed3" / "changes").glob("upserts-*.parquet")))
    assert upserts.column("n").to_pylist() == [255] * 40


def test_a_carried_column_holding_only_nulls_tonight_keeps_the_type_the_previous_night_wrote(day_one):
    """pandas writes a column it holds no value of as double: the output's title went from string to double
    and back, night by night, and a loader met a column of another type each time."""
    titles = [f"t{i}" for i in range(40)]
    nights = [pa.array(titles), pa.array([None] * 40, pa.float64()), pa.array(titles)]
    changes = [carried_night(day_one, "emptied", n, title=title) for n, title in enumerate(nights, 1)][1:]
    for number in (2, 3):
        written = pq.read_table(sorted((day_one / f"out-emptied{number}").glob("embeddings-*.parquet")))
        assert written.schema.field("title").type == pa.string()
    assert pq.read_table(sorted((day_one / "out-emptied2").glob("embeddings-*.parquet")))["title"].null_count == 40
    assert [{k: c["changes"][k] for k in ("upserts", "deletes", "restated")} for c in changes] == [
        {"upserts": 40, "deletes": 0, "restated": 40}
    ] * 2


def test_a_carried_column_named_chunk_is_a_value_not_a_passage_key(day_one):
    """Without --chunk_tokens an input column named `chunk` (a pre-split knowledge base's) is carried
    like any other: it neither keys the join nor turns a changed value into a delete."""
    text = pq.read_table(day_one / "day1" / "kb.parquet").column("text")

    def night(number: int, chunks: list[int], previous: str) -> dict:
        shard = write_parquet(day_one / f"chunked{number}" / "kb.parquet", id=IDS, text=text, chunk=chunks)
        out = day_one / f"out-chunked{number}"
        result = run_cli(
            "--input", str(shard), "--output", str(out), "--carry_columns", "chunk", "--previous", previous
        )
        assert result.returncode == 0, result.stderr
        return read_manifest(out)

    # The previous run did not carry it: every row is restated, none deleted.
    first = night(1, list(range(40)), str(day_one / "out1"))
    assert (first["rows_reused"], first["rows_embedded"], first["rows_deleted"]) == (40, 0, 0)
    assert first["changes"] == {**first["changes"], "upserts": 40, "deletes": 0, "restated": 40}
    # It carried it: the one row whose value changed is restated with it, and nothing is deleted.
    second = night(2, [7 if i == 3 else i for i in range(40)], str(day_one / "out-chunked1"))
    assert (second["rows_reused"], second["rows_deleted"]) == (40, 0)
    assert second["changes"] == {**second["changes"], "upserts": 1, "deletes": 0, "restated": 1}
    files = {
        kind: [day_one / "out-chunked2" / name for name in second["files"][kind]] for kind in ("upserts", "deletes")
    }
    assert pq.read_table(files["upserts"]).select(["id", "chunk"]).to_pylist() == [{"id": IDS[3], "chunk": 7}]
    assert sum(pq.read_metadata(path).num_rows for path in files["deletes"]) == 0


def test_a_carried_chunk_column_after_a_night_of_passages_is_not_taken_for_its_passage_numbers(day_one):
    """The previous run's `chunk` is its passage number (int32); tonight's is a carried value of any type.
    Read as tonight's type, an int64 one failed the join and a string one refused the previous file."""
    shard = day_one / "day1" / "kb.parquet"
    passages = day_one / "out-passages-48"
    result = run_cli("--input", str(shard), "--output", str(passages), "--chunk_tokens", "48", "--chunk_overlap", "8")
    assert result.returncode == 0, result.stderr
    text = pq.read_table(shard).column("text")
    nights = {"int64": pa.array(range(40), pa.int64()), "string": pa.array([f"part {i}" for i in range(40)])}
    for kind, chunks in nights.items():
        write_parquet(day_one / f"split-{kind}" / "kb.parquet", id=IDS, text=text, chunk=chunks)

    def command(kind: str) -> list[str]:
        return [
            "--input", str(day_one / f"split-{kind}" / "kb.parquet"), "--carry_columns", "chunk",
            "--output", str(day_one / f"out-split-{kind}"), "--previous", str(passages),
        ]  # fmt: skip

    results = run_clis(*(command(kind) for kind in nights))
    for (kind, chunks), result in zip(nights.items(), results, strict=True):
        assert result.returncode == 0, result.stderr
        out = day_one / f"out-split-{kind}"
        manifest = read_manifest(out)
        # Passages one night and rows the next: every row embedded again, no id deleted.
        assert (manifest["rows_embedded"], manifest["rows_reused"], manifest["rows_deleted"]) == (40, 0, 0)
        written = pq.read_table(sorted(out.glob("embeddings-*.parquet"))).sort_by("id")
        expected = pa.table({"id": IDS, "chunk": chunks}).sort_by("id")
        assert written.select(["id", "chunk"]).equals(expected)


def test_a_renamed_id_column_is_refused_with_previous_saying_to_leave_it_out(day_one):
    shard = write_parquet(day_one / "renamed" / "kb.parquet", doc_id=IDS, text=TEXTS)
    result = run_cli(
        "--input", str(shard), "--output", str(day_one / "out-renamed"), "--id_column", "doc_id",
        "--previous", str(day_one / "out1"), "--plan_only",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: --previous {day_one / 'out1'}: its id column is 'id', this run's is 'doc_id', so its rows cannot "
        "be matched to this run's; leave --previous out the night the id column changes (every row is embedded "
        "again)"
    )


def test_a_previous_run_whose_file_was_replaced_is_refused(day_one, tmp_path):
    """Its manifest records each file's bytes: a file replaced since would make a wrong change set."""
    copied = tmp_path / "copied"
    copied.mkdir()
    for path in (day_one / "out1").iterdir():
        if path.is_file():
            (copied / path.name).write_bytes(path.read_bytes())
    name = read_manifest(copied)["files"]["embeddings"][0]
    pq.write_table(pq.read_table(copied / name).slice(0, 0), copied / name)  # valid Parquet, no rows
    result = run_cli("--input", str(day_one / "day1" / "kb.parquet"), "--output", str(tmp_path / "out"),
                     "--previous", str(copied))  # fmt: skip
    assert result.returncode == 1
    assert (
        f"error: --previous {copied}: 1 embeddings file(s) differ in size from what its manifest recorded "
        f"({copied / name}); it was changed after it was written" in result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_a_previous_file_changed_in_place_at_its_size_is_refused_not_reused(day_one, tmp_path):
    """One byte of a vector flipped where zstd stored the vectors raw: the file kept its size and read back
    without error, and the next night reused a vector of norm 7e27 as if it were the model's."""
    copied = tmp_path / "copied"
    shutil.copytree(day_one / "out1", copied)
    name = read_manifest(copied)["files"]["embeddings"][0]
    metadata = pq.ParquetFile(copied / name).metadata
    assert all(metadata.row_group(0).column(i).compression == "ZSTD" for i in range(metadata.num_columns))
    columns = [metadata.row_group(0).column(i) for i in range(metadata.num_columns)]
    vectors = next(c for c in columns if c.path_in_schema.startswith("embedding."))
    data = bytearray((copied / name).read_bytes())
    data[vectors.data_page_offset + vectors.total_compressed_size // 2] ^= 0x40
    (copied / name).write_bytes(data)
    result = run_cli("--input", str(day_one / "day1" / "kb.parquet"), "--output", str(tmp_path / "out"),
                     "--previous", str(copied))  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: {copied / name}: ") and "CRC checksum verification failed" in last, last
    assert last.endswith(
        f"; a file of --previous {copied}: pass another finished run, or leave --previous out to embed every row afresh"
    )
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_previous_run_holding_an_id_twice_is_refused_naming_the_folder(day_one, tmp_path):
    """A manifest edited by hand to list two runs' files, or one file twice: each id would be read twice.
    A name listed twice is refused before workers start; an id held twice in the workers, where the
    message named neither the folder nor how it came about ("--previous output holds id ...")."""
    copies = {}
    for case in ("file listed twice", "two files of one run"):
        copied = copies[case] = tmp_path / case.replace(" ", "-")
        shutil.copytree(day_one / "out1", copied)
        manifest = json.loads((copied / "manifest.json").read_text())
        name = manifest["files"]["embeddings"][0]
        if case == "two files of one run":
            shutil.copy(copied / name, copied / f"again-{name}")
            name = f"again-{name}"
        manifest["files"]["embeddings"].append(name)
        (copied / "manifest.json").write_text(json.dumps(manifest))
    day_two = ["--input", str(day_one / "day1" / "kb.parquet"), "--carry_columns", "title"]
    listed_twice, held_twice = run_clis(
        [*day_two, "--output", str(tmp_path / "out-a"), "--previous", str(copies["file listed twice"])],
        [*day_two, "--output", str(tmp_path / "out-b"), "--previous", str(copies["two files of one run"])],
    )
    first = read_manifest(day_one / "out1")["files"]["embeddings"][0]
    assert listed_twice.returncode == 1 and listed_twice.stderr.splitlines()[-1] == (
        f"error: --previous {copies['file listed twice']}: its manifest lists {first} 2 times, which no run "
        "writes; pass a finished run's output as it wrote it, or leave --previous out"
    )
    assert "Worker" not in listed_twice.stderr
    held = re.search(
        rf"error: --previous {re.escape(str(copies['two files of one run']))} holds id '([^']+)' 2 times, which no "
        r"run writes \(were files of two runs listed in its manifest\?\); it cannot be reused: pass a finished "
        "run's output as it wrote it, or leave --previous out",
        held_twice.stderr,
    )
    assert held_twice.returncode == 1 and held and held[1] in IDS, held_twice.stderr
    assert not (tmp_path / "out-a" / "manifest.json").exists() and not (tmp_path / "out-b" / "manifest.json").exists()


def test_a_carried_column_dictionary_encoded_one_night_and_plain_the_next_restates_only_changed_values(day_one):
    """Writers dictionary-encode a column or not as they please: equal values are no change, however
    encoded, and a changed value is one whatever the encoding."""
    titles = [f"t{i}" for i in range(40)]
    edited = [*titles[:7], "retitled", *titles[8:]]
    nights = [
        pa.array(titles),
        pa.array(titles).dictionary_encode(),  # the same values, dictionary-encoded
        pa.array(edited).dictionary_encode(),  # one value changed
        pa.array(edited),  # the same values, plain
    ]
    changes = [carried_night(day_one, "dictionary", n, title=title) for n, title in enumerate(nights, 1)][1:]
    assert [(c["rows_reused"], c["rows_embedded"]) for c in changes] == [(40, 0)] * 3
    assert [{k: c["changes"][k] for k in ("upserts", "deletes", "restated")} for c in changes] == [
        {"upserts": 0, "deletes": 0, "restated": 0},
        {"upserts": 1, "deletes": 0, "restated": 1},
        {"upserts": 0, "deletes": 0, "restated": 0},
    ]
    upserts = pq.read_table(sorted((day_one / "out-dictionary3" / "changes").glob("upserts-*.parquet")))
    assert upserts.select(["id", "title"]).to_pylist() == [{"id": IDS[7], "title": "retitled"}]


def test_dictionaries_inside_carried_lists_and_structs_one_night_and_plain_the_next_restate_only_changed_values(
    day_one,
):
    """The same at any depth: a list of a dictionary, or a struct with a dictionary field, one night and
    plain lists and structs (large_string, large_list) the next restated all 40 rows."""
    tags = [[f"t{i % 3}", "common"] for i in range(40)]
    edited = [*tags[:7], ["retagged", "common"], *tags[8:]]
    sources = [f"s{i % 4}" for i in range(40)]

    def tag_lists(values: list[list[str]], large: bool, dictionary: bool) -> pa.Array:
        plain = pa.array(values, pa.large_list(pa.string()) if large else pa.list_(pa.string()))
        items = plain.values.dictionary_encode() if dictionary else plain.values
        return type(plain).from_arrays(plain.offsets, items)

    def meta(source: pa.Array) -> pa.Array:
        return pa.StructArray.from_arrays([source], ["source"])

    nights = [
        (tag_lists(tags, False, True), meta(pa.array(sources).dictionary_encode())),
        (tag_lists(tags, False, False), meta(pa.array(sources, pa.large_string()))),  # the same values, plain
        (tag_lists(edited, True, True), meta(pa.array(sources).dictionary_encode())),  # one changed
    ]
    changes = [carried_night(day_one, "nested", n, tags=t, meta=m) for n, (t, m) in enumerate(nights, 1)][1:]
    assert [(c["rows_reused"], c["rows_embedded"]) for c in changes] == [(40, 0)] * 2
    assert [{k: c["changes"][k] for k in ("upserts", "deletes", "restated")} for c in changes] == [
        {"upserts": 0, "deletes": 0, "restated": 0},
        {"upserts": 1, "deletes": 0, "restated": 1},
    ]
    upserts = pq.read_table(sorted((day_one / "out-nested3" / "changes").glob("upserts-*.parquet")))
    assert upserts.select(["id", "tags", "meta"]).to_pylist() == [
        {"id": IDS[7], "tags": ["retagged", "common"], "meta": {"source": "s3"}}
    ]


def test_float_ids_0_and_minus_0_are_one_id_across_nights(tmp_path):
    """-0.0 equals 0.0: within a night they are one id (a duplicate), so across nights too."""
    night1, night2, out1 = tmp_path / "d1" / "kb.parquet", tmp_path / "d2" / "kb.parquet", tmp_path / "o1"
    write_parquet(night1, id=pa.array([0.0, 1.0]), text=["alpha page", "beta page"])
    assert run_cli("--input", str(night1), "--output", str(out1)).returncode == 0
    write_parquet(night2, id=pa.array([-0.0, 1.0]), text=["alpha page", "beta page"])
    result = run_cli("--input", str(night2), "--output", str(tmp_path / "o2"), "--previous", str(out1))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "o2")
    assert (manifest["rows_reused"], manifest["rows_embedded"], manifest["rows_deleted"]) == (2, 0, 0)
    assert manifest["changes"] == {**manifest["changes"], "upserts": 0, "deletes": 0}


def test_a_float_id_minus_0_is_shown_as_written_in_rejects_and_deletes(tmp_path):
    """The join compares -0.0 as 0.0; the duplicate's reject and the change set's delete still name
    the id as it was written."""
    night1, night2, out1, out2 = tmp_path / "d1.parquet", tmp_path / "d2.parquet", tmp_path / "o1", tmp_path / "o2"
    write_parquet(night1, id=pa.array([-0.0, -0.0, 1.0]), text=["alpha page", "again alpha", "beta page"])
    assert run_cli("--input", str(night1), "--output", str(out1)).returncode == 0
    rejects = pq.read_table(sorted(out1.glob("rejected-*.parquet"))).select(["id", "row_number", "reason"])
    assert rejects.to_pylist() == [{"id": 0.0, "row_number": 1, "reason": "duplicate_id"}]
    assert np.signbit(rejects.column("id").to_numpy()).tolist() == [True]
    write_parquet(night2, id=pa.array([1.0]), text=["beta page"])
    assert run_cli("--input", str(night2), "--output", str(out2), "--previous", str(out1)).returncode == 0
    deletes = pq.read_table(sorted((out2 / "changes").glob("deletes-*.parquet"))).column("id").to_numpy()
    assert (deletes.tolist(), np.signbit(deletes).tolist()) == ([0.0], [True])


def test_a_previous_id_tonights_type_cannot_hold_fails_with_the_previous_runs_advice(tmp_path):
    """Yesterday's ids in nanoseconds (pandas), tonight's in microseconds (Spark): an id of yesterday's with a
    part below the microsecond cannot be read as tonight's type. The error named the file, but not that it
    was --previous's, nor what to do."""
    nanoseconds = pa.array([1_000_000_000_000_000_001, 1_000_000_000_000_001_000], pa.timestamp("ns", "UTC"))
    night1 = write_parquet(tmp_path / "d1" / "a.parquet", id=nanoseconds, text=["one", "two"])
    first = run_cli("--input", str(night1), "--output", str(tmp_path / "t1"))
    assert first.returncode == 0, first.stderr
    microseconds = pa.array([1_000_000_000_000_001], pa.timestamp("us", "UTC"))
    night2 = write_parquet(tmp_path / "d2" / "a.parquet", id=microseconds, text=["two"])
    result = run_cli("--input", str(night2), "--output", str(tmp_path / "t2"), "--previous", str(tmp_path / "t1"))
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    name = read_manifest(tmp_path / "t1")["files"]["embeddings"][0]
    assert last.startswith(f"error: {tmp_path / 't1' / name}: column 'id' at row 0 cannot be read as "), last
    assert last.endswith(
        f"; a file of --previous {tmp_path / 't1'}: pass another finished run, or leave --previous out to embed "
        "every row afresh"
    ), last
