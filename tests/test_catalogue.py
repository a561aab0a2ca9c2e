"""The bad-input catalogue: what other systems' Parquet files really hold, each case with its
exact outcome (a clear failure naming the file, rows rejected with a reason, or success), and
never a row lost. Every case is added to the table printed when the suite ends."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import embedding_rows, read_manifest, record, run_cli, run_clis, write_parquet

GOOD = {"id": ["g-1", "g-2"], "text": ["a first good passage", "a second good passage"]}


def _run(tmp_path, *args: str):
    return run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"), *args)


def _inputs(tmp_path) -> list:
    return sorted((tmp_path / "in").glob("*.parquet"))


def _failed(tmp_path, result, message: str, case: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: {message}")
    assert "ERROR worker" not in result.stderr  # a worker's record of the job's own error is left out
    out = tmp_path / "out"
    assert (sorted(out.iterdir()) if out.exists() else []) == []  # nothing published, nothing half-written
    record("input", case, "job fails naming the file; nothing published")


def _succeeded(tmp_path, result, case: str, outcome: str) -> dict:
    assert result.returncode == 0, result.stderr
    assert record("input", case, outcome, _inputs(tmp_path), tmp_path / "out") == 0
    return read_manifest(tmp_path / "out")


def _rejects(tmp_path) -> list[tuple]:
    table = pq.read_table(sorted((tmp_path / "out").glob("rejected-*.parquet")))
    return sorted((row["id"], row["reason"]) for row in table.to_pylist())


def _vectors(tmp_path) -> dict:
    return {key: np.asarray(row["embedding"]) for key, row in embedding_rows(tmp_path / "out").items()}


@pytest.mark.parametrize(
    "case, damage",
    [
        ("corrupt footer", lambda data: data[:-40] + b"\x07" * 32 + data[-8:]),
        ("truncated file", lambda data: data[: len(data) // 2]),
        ("zero-byte file", lambda data: b""),
    ],
)
def test_damaged_file_fails_the_job_and_names_it(tmp_path, case, damage):
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    bad = write_parquet(tmp_path / "in" / "b.parquet", **GOOD)
    bad.write_bytes(damage(bad.read_bytes()))
    _failed(tmp_path, _run(tmp_path), f"{bad}: not a readable Parquet file", case)


def test_valid_file_with_zero_rows_is_read_as_no_rows(tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    write_parquet(tmp_path / "in" / "b.parquet", id=pa.array([], pa.string()), text=pa.array([], pa.string()))
    manifest = _succeeded(tmp_path, _run(tmp_path), "file with zero rows", "success: 0 rows from it")
    assert (manifest["rows_in"], manifest["rows_embedded"]) == (2, 2)


def test_text_as_string_in_one_shard_and_large_string_in_another(tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    write_parquet(
        tmp_path / "in" / "b.parquet", id=["l-1"], text=pa.array(["a large string passage"], pa.large_string())
    )
    manifest = _succeeded(tmp_path, _run(tmp_path), "text: string vs large_string shards", "success")
    assert (manifest["rows_in"], manifest["rows_embedded"]) == (3, 3)


def test_ids_int_in_one_shard_and_string_in_another(tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    bad = write_parquet(tmp_path / "in" / "b.parquet", id=[7], text=["an int id"])
    message = f"{bad}: column 'id' is int64, but other shards have string"
    _failed(tmp_path, _run(tmp_path), message, "ids: int vs string shards")


def test_a_column_missing_in_one_shard(tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    bad = write_parquet(tmp_path / "in" / "b.parquet", id=["b-1"], body=["no text column"])
    _failed(
        tmp_path,
        _run(tmp_path),
        f"{bad}: column 'text' not found; columns found: 'id', 'body'",
        "column missing in one shard",
    )


def test_dictionary_encoded_text_is_embedded_like_plain_text(tmp_path):
    texts = ["repeated passage", "repeated passage", "another passage"]
    write_parquet(tmp_path / "in" / "a.parquet", id=["p-0", "p-1", "p-2"], text=texts)
    write_parquet(tmp_path / "in" / "b.parquet", id=["d-0", "d-1", "d-2"], text=pa.array(texts).dictionary_encode())
    manifest = _succeeded(tmp_path, _run(tmp_path), "dictionary-encoded text", "success: same vectors as plain text")
    assert (manifest["rows_in"], manifest["rows_embedded"]) == (6, 6)
    vectors = _vectors(tmp_path)
    for i in range(3):
        np.testing.assert_allclose(vectors[f"d-{i}"], vectors[f"p-{i}"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "texts",
    [pa.array([3.5, None], pa.float64()), pa.array([["a list"], None], pa.list_(pa.string()))],
    ids=["double", "list"],
)
def test_text_column_of_a_non_string_type_rejects_its_rows(tmp_path, texts):
    """A nested one too: the plan, which sums the text column's bytes from the footers, finds no leaf of its name."""
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    write_parquet(tmp_path / "in" / "b.parquet", id=["n-1", "n-2"], text=texts)
    case = f"text column of type {texts.type}"
    manifest = _succeeded(tmp_path, _run(tmp_path), case, "rows rejected: text_not_string")
    assert manifest["rejected_by_reason"] == {"null_text": 1, "text_not_string": 1}
    assert _rejects(tmp_path) == [("n-1", "text_not_string"), ("n-2", "null_text")]


def test_a_10_mb_text_is_truncated_and_embedded(tmp_path):
    huge = "word " * 2_000_000
    write_parquet(tmp_path / "in" / "a.parquet", id=["huge", "small"], text=[huge, "a small one"])
    manifest = _succeeded(tmp_path, _run(tmp_path), "one 10 MB text", "success: truncated to 256 tokens")
    assert (manifest["rows_embedded"], manifest["rows_truncated"]) == (2, 1)


def test_nul_characters_are_text_and_lone_surrogates_cannot_be_arrow_strings(tmp_path):
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        pa.array(["lone \ud800 surrogate"])  # Arrow strings are UTF-8: such a file cannot be written
    write_parquet(tmp_path / "in" / "a.parquet", id=["nul"], text=["before\x00after"])
    manifest = _succeeded(tmp_path, _run(tmp_path), "NUL characters in text", "success: embedded as text")
    assert manifest["rows_embedded"] == 1


def test_binary_text_column_decodes_utf8_and_rejects_what_is_not(tmp_path):
    values = [
        b"plain utf-8 text",
        "caf\u00e9 na\u00efve".encode(),
        b"\xff\xfe not utf-8",
        b"\xed\xa0\x80 surrogate",
        None,
    ]
    write_parquet(
        tmp_path / "in" / "a.parquet", id=["u-1", "u-2", "bad", "sur", "null"], text=pa.array(values, pa.binary())
    )
    write_parquet(tmp_path / "in" / "b.parquet", id=["v-1"], text=pa.array([b"all valid here"], pa.large_binary()))
    manifest = _succeeded(
        tmp_path, _run(tmp_path), "binary text column, invalid UTF-8", "valid decoded; rest rejected: invalid_utf8"
    )
    assert manifest["rejected_by_reason"] == {"invalid_utf8": 2, "null_text": 1}
    assert _rejects(tmp_path) == [("bad", "invalid_utf8"), ("null", "null_text"), ("sur", "invalid_utf8")]
    assert sorted(_vectors(tmp_path)) == ["u-1", "u-2", "v-1"]


def test_string_text_column_holding_invalid_utf8_rejects_those_rows(tmp_path):
    """Arrow does not check a string column's bytes as it reads Parquet: a writer that did not check
    either leaves bytes no string may hold."""
    values = [b"plain text", b"\xff\xfe not utf-8", b"\xed\xa0\x80 surrogate", "caf\u00e9".encode()]
    offsets = pa.py_buffer(np.cumsum([0, *map(len, values)]).astype(np.int32).tobytes())
    text = pa.Array.from_buffers(pa.string(), 4, [None, offsets, pa.py_buffer(b"".join(values))])
    with pytest.raises(pa.ArrowInvalid, match="Invalid UTF8"):
        text.validate(full=True)
    write_parquet(tmp_path / "in" / "a.parquet", id=["ok", "bad", "sur", "cafe"], text=text)
    manifest = _succeeded(
        tmp_path, _run(tmp_path), "string text column, invalid UTF-8", "valid embedded; rest rejected: invalid_utf8"
    )
    assert manifest["rejected_by_reason"] == {"invalid_utf8": 2}
    assert _rejects(tmp_path) == [("bad", "invalid_utf8"), ("sur", "invalid_utf8")]
    assert sorted(_vectors(tmp_path)) == ["cafe", "ok"]


def test_duplicate_and_null_ids(tmp_path):
    write_parquet(
        tmp_path / "in" / "a.parquet", id=["dup", "dup", None, "one"], text=["first", "second", "no id", "one"]
    )
    result = _run(tmp_path)
    manifest = _succeeded(tmp_path, result, "duplicate and null ids", "first kept; rest rejected with a reason")
    assert manifest["rejected_by_reason"] == {"duplicate_id": 1, "null_id": 1}
    assert sorted(_vectors(tmp_path)) == ["dup", "one"]
    assert "rows were rejected" not in result.stderr  # half the rows: no warning


def test_a_run_that_rejects_most_rows_warns_naming_the_columns(tmp_path):
    """A wrong --id_column (a category, say) makes most rows duplicates: the run succeeds, and says so."""
    write_parquet(tmp_path / "in" / "a.parquet", id=["a", "b", "c", "d", "e"], kind=["doc", "doc", "faq", "doc", "faq"],
                  text=["one", "two", "three", "four", "five"])  # fmt: skip
    result = _run(tmp_path, "--id_column", "kind")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        " WARNING pipeline.run: 3 of 5 rows were rejected (duplicate_id 3): check --id_column kind and --text_column "
        "text; the rejects files name each row and its reason"
    )


def test_a_night_that_deletes_most_of_the_previous_runs_ids_warns(tmp_path):
    """Shards missing or emptied upstream delete their rows: the night succeeds (the loaders refuse to
    apply it), and now says so; deleting half is no fault."""
    day1 = write_parquet(tmp_path / "day1" / "a.parquet", id=["a", "b", "c", "d"], text=["one", "two", "three", "x"])
    write_parquet(tmp_path / "day2" / "a.parquet", id=pa.array([], pa.string()), text=pa.array([], pa.string()))
    write_parquet(tmp_path / "day3" / "a.parquet", id=["a", "b"], text=["one", "two"])
    assert run_cli("--input", str(day1), "--output", str(tmp_path / "out1")).returncode == 0
    previous = ("--previous", str(tmp_path / "out1"))
    emptied, halved = run_clis(
        ["--input", f"{tmp_path}/day2/*.parquet", "--output", str(tmp_path / "out2"), *previous],
        ["--input", f"{tmp_path}/day3/*.parquet", "--output", str(tmp_path / "out3"), *previous],
    )
    assert (emptied.returncode, halved.returncode) == (0, 0), emptied.stderr + halved.stderr
    assert read_manifest(tmp_path / "out2")["rows_deleted"] == 4
    assert emptied.stderr.splitlines()[-1].endswith(
        f" WARNING pipeline.run: this run deleted 4 of the 4 ids its --previous run {tmp_path / 'out1'} held (100%): "
        "check --input; the loaders refuse to apply it unless --max_deleted_share allows that many"
    )
    assert read_manifest(tmp_path / "out3")["rows_deleted"] == 2
    assert "WARNING" not in halved.stderr, halved.stderr


def test_a_glob_matching_thousands_of_small_files(tmp_path):
    for i in range(2000):
        write_parquet(
            tmp_path / "in" / f"p-{i:05d}.parquet", id=[f"{i}-a", f"{i}-b"], text=[f"passage {i} a", f"passage {i} b"]
        )
    manifest = _succeeded(tmp_path, _run(tmp_path), "glob matching 2,000 small files", "success")
    assert (manifest["rows_in"], manifest["rows_embedded"]) == (4000, 4000)
