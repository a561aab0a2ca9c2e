"""Input planning, reading and validation: types from shards holding rows, wide binary text, errors on
one line, every footer read by a local plan checked before any worker starts."""

from __future__ import annotations

import json
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.plan import match_inputs, plan_job, typed_schema
from pipeline.run import make_options
from schemas.inputs import InputError
from tests.conftest import embedding_rows, read_manifest, run_cli, run_clis, write_parquet
from transforms.paths import glob_regex, pattern_reaches
from transforms.validate import text_as_strings


def test_a_null_column_takes_its_type_from_a_shard_holding_rows_not_an_empty_one(tmp_path):
    """A carried column all null in the first shard (type null) is typed by the next shard that holds
    rows: an empty pandas shard between them types it double, a writer's guess, and taking that
    failed the job at the third shard ("column 'title' is string, but other shards have double")."""
    files = [
        write_parquet(tmp_path / "a.parquet", id=["a"], text=["x"], title=pa.array([None], pa.null())),
        write_parquet(
            tmp_path / "b.parquet",
            id=pa.array([], pa.float64()),
            text=pa.array([], pa.float64()),
            title=pa.array([], pa.float64()),
        ),
        write_parquet(tmp_path / "c.parquet", id=["c"], text=["y"], title=["T"]),
    ]
    path, _, schema, valueless, typed_in = typed_schema([str(f) for f in files], ["id", "text", "title"])
    assert path == str(files[0])
    assert schema.field("title").type == pa.string() and valueless == []
    assert typed_in == {"title": str(files[2])}  # what a message about its type names


def test_large_binary_text_stays_as_wide_as_its_bytes():
    """large_binary text (or large_string holding bytes that are not UTF-8) decodes to large_string:
    decoded to string, a batch past 2 GiB (string's 32-bit offsets) took Python's decoding path and
    came back a ChunkedArray, which failed the job with a TypeError in CheckRows."""
    text, invalid = text_as_strings(pa.array([b"caf\xc3\xa9", None], pa.large_binary()))
    assert text.type == pa.large_string() and text.to_pylist() == ["caf\u00e9", None] and invalid is None
    text, invalid = text_as_strings(pa.array([b"ok", b"\xff bad"], pa.large_binary()))
    assert isinstance(text, pa.Array) and text.type == pa.large_string()
    assert text.to_pylist() == ["ok", None] and invalid.to_pylist() == [False, True]
    text, invalid = text_as_strings(pa.array([b"ok", b"\xff bad"], pa.binary()))
    assert text.type == pa.string() and invalid.to_pylist() == [False, True]


def test_a_corrupt_footer_is_named_on_the_last_line(tmp_path):
    """Arrow's Thrift error ends in a newline: the message split over two lines and the last line
    of stderr was ")", not the `error: ...` line."""
    data = write_parquet(tmp_path / "b.parquet", id=["a"], text=["x"]).read_bytes()
    corrupt = tmp_path / "in" / "a.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(data[:-40] + b"\x07" * 32 + data[-8:])
    result = run_cli("--input", str(corrupt), "--output", str(tmp_path / "out"), "--plan_only")
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: {corrupt}: not a readable Parquet file (") and last.endswith(")"), last


@pytest.mark.parametrize("case", ["zero-byte file", "id of another type family", "column missing"])
def test_a_later_shard_the_plan_reads_anyway_fails_before_any_worker_starts(tmp_path, case):
    """A local run's plan reads every footer (for its progress total): a later shard that is not
    Parquet, or whose columns the workers would refuse, is named then (--plan_only too), not after
    the workers have started and loaded the model."""
    write_parquet(tmp_path / "in" / "a.parquet", id=["a"], text=["hello"])
    bad = tmp_path / "in" / "b.parquet"
    if case == "zero-byte file":
        bad.write_bytes(b"")
        message = f"{bad}: not a readable Parquet file"
    elif case == "id of another type family":
        write_parquet(bad, id=[1], text=["hello"])
        message = f"{bad}: column 'id' is int64, but other shards have string"
    else:
        write_parquet(bad, id=["b"], body=["hello"])
        message = f"{bad}: column 'text' not found; columns found: 'id', 'body'"
    write_parquet(tmp_path / "in" / "c.parquet", id=pa.array([], pa.float64()), body=pa.array([], pa.float64()))
    output = tmp_path / "out"
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(output), "--plan_only")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: {message}")
    assert "Traceback" not in result.stderr and not output.exists()


def test_a_spark_output_folders_markers_checksums_and_unfinished_attempts_are_passed_over(tmp_path):
    """A Spark job's output folder holds `_SUCCESS`, `.crc` checksums, a `_common_metadata` summary and,
    while an attempt runs or after one failed, `_temporary/`: `kb/*` failed on `_SUCCESS` as "not a
    readable Parquet file", and `kb/**` would also have read an unfinished attempt's rows. Names the
    pattern spells out are read."""
    kb = tmp_path / "kb"
    write_parquet(kb / "part-00000-c0.snappy.parquet", id=["a", "b"], text=["one", "two"])
    write_parquet(kb / "_temporary" / "0" / "part-00001-c0.snappy.parquet", id=["a", "c"], text=["one", "three"])
    (kb / "_SUCCESS").write_bytes(b"")
    (kb / ".part-00000-c0.snappy.parquet.crc").write_bytes(b"crc")
    pq.write_metadata(pa.schema([("id", pa.string()), ("text", pa.string())]), kb / "_common_metadata")
    for pattern, passed_over in [(f"{kb}/*", 3), (f"{kb}/**", 4)]:
        output = tmp_path / f"out-{passed_over}"
        result = run_cli("--input", pattern, "--output", str(output))
        assert result.returncode == 0, result.stderr
        assert (
            f"INFO pipeline.plan: --input {pattern}: {passed_over} file(s) passed over whose names start with _ or . "
            f"({kb}/.part-00000-c0.snappy.parquet.crc, ...), as Spark and pyarrow do"
        ) in result.stderr
        assert [f["path"] for f in read_manifest(output)["input_files"]] == [str(kb / "part-00000-c0.snappy.parquet")]
        assert sorted(embedding_rows(output)) == ["a", "b"]
    only = run_cli("--input", f"{kb}/_*", "--output", str(tmp_path / "out-markers"))
    assert only.returncode == 1
    assert (
        only.stderr.strip().splitlines()[-1]
        == f"error: {kb}/_SUCCESS: not a readable Parquet file (Parquet file size is 0 bytes)"
    )
    hidden = run_cli("--input", f"{kb}/part-*.parquet,{kb}/*.crc", "--output", str(tmp_path / "out-crc"))
    assert hidden.stderr.strip().splitlines()[-1] == (
        f"error: --input pattern '{kb}/*.crc' matches only files whose names start with _ or . "
        f"({kb}/.part-00000-c0.snappy.parquet.crc): markers, checksums and work folders, not data"
    )


def test_a_pattern_naming_files_by_type_refuses_folders_so_named_whose_files_it_would_leave_out(tmp_path):
    """Spark writes a dataset as a folder, `kb/docs.parquet/part-*.parquet`; Beam's `*`, as a shell's, neither
    descends into it nor lists it, so `kb/*.parquet` read `kb/extra.parquet` alone and left the datasets'
    rows out without a word. The refusal names the folder and the pattern that reads it; with it, the
    folders' files are read and their markers and unfinished attempts passed over."""
    kb = tmp_path / "kb"
    write_parquet(kb / "docs.parquet" / "part-00000-c0.snappy.parquet", id=["a", "b"], text=["one", "two"])
    write_parquet(kb / "docs.parquet" / "_temporary" / "0" / "part-00001-c0.snappy.parquet", id=["x"], text=["y"])
    (kb / "docs.parquet" / "_SUCCESS").write_bytes(b"")
    write_parquet(kb / "tickets.parquet" / "lang=en" / "part-00000-c1.snappy.parquet", id=["d"], text=["four"])
    write_parquet(kb / "extra.parquet", id=["c"], text=["three"])
    both, datasets_only, own_output, read_too = run_clis(
        ["--input", f"{kb}/*.parquet", "--output", str(tmp_path / "out")],
        ["--input", f"{kb}/d*.parquet", "--output", str(tmp_path / "out")],
        ["--input", f"{kb}/e*.parquet", "--output", str(kb / "embedded.parquet")],
        ["--input", f"{kb}/*.parquet,{kb}/*.parquet/**", "--output", str(tmp_path / "out"), "--plan_only"],
    )
    assert both.returncode == 1 and both.stderr.splitlines()[-1] == (
        f"error: --input {kb}/*.parquet: matches 2 folder(s) named as its files are ({kb}/docs.parquet/, ...), "
        "as Spark writes a dataset, and a wildcard does not read into a folder; pass their files too, as in "
        f"--input '{kb}/*.parquet,{kb}/*.parquet/**'"
    )
    assert datasets_only.returncode == 1 and datasets_only.stderr.splitlines()[-1] == (
        f"error: --input {kb}/d*.parquet: matches 1 folder(s) named as its files are ({kb}/docs.parquet/), "
        f"as Spark writes a dataset, and a wildcard does not read into a folder; pass their files too, as in "
        f"--input '{kb}/d*.parquet/**'"
    )
    assert own_output.returncode == 1 and own_output.stderr.splitlines()[-1] == (
        f"error: --output {kb}/embedded.parquet: the --input pattern '{kb}/e*.parquet' takes in files the job "
        "writes there, so the next night would read this night's outputs as input; write the outputs to a folder "
        "no pattern reaches"
    )
    assert read_too.returncode == 0, read_too.stderr
    plan = json.loads(read_too.stdout[read_too.stdout.index("{") :])
    assert [f["path"] for f in plan["input_files"]] == [
        str(kb / "extra.parquet"),
        str(kb / "docs.parquet" / "part-00000-c0.snappy.parquet"),
        str(kb / "tickets.parquet" / "lang=en" / "part-00000-c1.snappy.parquet"),
    ]
    assert not (tmp_path / "out").exists() and not (kb / "embedded.parquet").exists()
    with pytest.raises(InputError) as partitioned:  # spelled out: its files are a level down, in lang=en/
        match_inputs([f"{kb}/tickets.parquet"])
    assert str(partitioned.value) == (
        f"--input {kb}/tickets.parquet: a folder; pass its files, as in '{kb}/tickets.parquet/**'"
    )
    write_parquet(tmp_path / "years" / "2024" / "docs.parquet", id=["e"], text=["five"])
    write_parquet(tmp_path / "years" / "2025" / "docs.parquet" / "part-00000.parquet", id=["f"], text=["six"])
    with pytest.raises(InputError) as named_file:  # a wildcard before the name: 2025's folder went unread
        match_inputs([f"{tmp_path}/years/*/docs.parquet"])
    assert str(named_file.value).startswith(
        f"--input {tmp_path}/years/*/docs.parquet: matches 1 folder(s) named as its files are "
        f"({tmp_path}/years/2025/docs.parquet/), as Spark writes a dataset"
    )


def test_a_file_two_spellings_reach_through_a_link_is_read_once(tmp_path):
    """`kb/a.parquet,current/*.parquet` with current a link to kb read a.parquet twice: its rows counted
    twice in rows_in, the second copies rejected as duplicates of themselves. A file's own link likewise."""
    kb = tmp_path / "kb"
    write_parquet(kb / "a.parquet", id=["a"], text=["one"])
    write_parquet(kb / "b.parquet", id=["b"], text=["two"])
    (tmp_path / "current").symlink_to(kb)
    (tmp_path / "latest.parquet").symlink_to(kb / "b.parquet")
    found = match_inputs([f"{kb}/a.parquet", f"{tmp_path}/current/*.parquet", f"{tmp_path}/latest.parquet"])
    assert [f.path for f in found] == [str(kb / "a.parquet"), f"{tmp_path}/current/b.parquet"]  # first spellings


def test_a_link_to_a_folder_a_wildcard_matches_is_followed_as_a_shell_follows_it(tmp_path):
    """`kb/*/*.parquet` with kb/team-a a link to a folder elsewhere (a mount, a shared disk) left team-a's
    files out of the run without a word, and with --previous their rows were deleted from the table. A
    shell's glob reads them; so does the job, a file two spellings reach once. As in bash, `**` crosses no
    link, but the names after it are looked for in the links it meets; below a link it follows, `**` takes
    in every file."""
    elsewhere, kb = tmp_path / "elsewhere", tmp_path / "kb"
    write_parquet(elsewhere / "team-a" / "a.parquet", id=["a"], text=["one"])
    write_parquet(elsewhere / "team-a" / "deep" / "d.parquet", id=["d"], text=["four"])
    write_parquet(kb / "team-b" / "b.parquet", id=["b"], text=["two"])
    (kb / "team-a").symlink_to(elsewhere / "team-a")
    (kb / "latest").symlink_to(kb / "team-b")  # the same file as team-b's: read once, under its first spelling
    (kb / "team-b" / "up").symlink_to(kb)  # a loop, which no pattern here goes round
    found = [f.path for f in match_inputs([f"{kb}/*/*.parquet"])]
    assert found == [str(kb / "latest" / "b.parquet"), str(kb / "team-a" / "a.parquet")]
    assert [f.path for f in match_inputs([f"{kb}/team-?/*.parquet"])] == [
        str(kb / "team-a" / "a.parquet"),
        str(kb / "team-b" / "b.parquet"),
    ]
    assert [f.path for f in match_inputs([f"{kb}/*-a/**"])] == [
        str(kb / "team-a" / "a.parquet"),
        str(kb / "team-a" / "deep" / "d.parquet"),
    ]
    assert [f.path for f in match_inputs([f"{kb}/**/*.parquet"])] == found  # as bash's globstar lists them
    assert [f.path for f in match_inputs([f"{kb}/**/deep/*.parquet"])] == [str(kb / "team-a" / "deep" / "d.parquet")]
    assert [f.path for f in match_inputs([f"{kb}/**"])] == [str(kb / "team-b" / "b.parquet")]  # enters no link
    (kb / "team[1]").symlink_to(elsewhere / "team-a")  # a name that reads as a pattern
    assert [f.path for f in match_inputs([f"{kb}/t*[]]/**"])] == [
        str(kb / "team[1]" / "a.parquet"),
        str(kb / "team[1]" / "deep" / "d.parquet"),
    ]
    with pytest.raises(InputError, match="^no file matches --input pattern"):  # a file, where a folder would be
        match_inputs([f"{kb}/team-b/b.parquet/*"])
    (kb / "gone").symlink_to(tmp_path / "nowhere")  # a folder's link, whose mount is gone, say
    with pytest.raises(InputError, match=r"cannot read .*/kb/gone, a link to .*/nowhere \(No such file or "):
        match_inputs([f"{kb}/*/*.parquet"])
    # Among all a `**` crosses, a stale link to a file is as likely: passed over, with a warning.
    assert [f.path for f in match_inputs([f"{kb}/**/*.parquet"])] == found
    assert [f.path for f in match_inputs([f"{kb}/t*/*.parquet"])] == [  # team[1]'s is team-a's: read once
        str(kb / "team-a" / "a.parquet"),
        str(kb / "team-b" / "b.parquet"),
    ]
    (elsewhere / "team-a" / "a.parquet").unlink()
    (elsewhere / "team-a" / "x.parquet").symlink_to(tmp_path / "nowhere.parquet")
    with pytest.raises(InputError, match=r"cannot read .*/kb/team-a/x\.parquet, a link to .*nowhere\.parquet "):
        match_inputs([f"{kb}/t*-a/*.parquet"])
    # A lost+found is entered as Beam's listing enters it, its links too; only what cannot be read there is not named.
    write_parquet(elsewhere / "other" / "o.parquet", id=["o"], text=["five"])
    (kb / "lost+found").mkdir()
    (kb / "lost+found" / "lnk").symlink_to(elsewhere / "other")
    assert [f.path for f in match_inputs([f"{kb}/**/o.parquet"])] == [str(kb / "lost+found" / "lnk" / "o.parquet")]


def test_a_wildcard_matches_names_holding_a_backslash_and_files_in_the_current_folder(tmp_path, monkeypatch):
    """Beam's `*` stops at a backslash, Windows' separator, which on Linux and object storage is a character
    of a name: `kb/*.parquet` left `kb/a\\b.parquet` out of the run without a word. And Beam finds nothing
    for a pattern with no folder before its wildcard: `--input '*.parquet'` run in the knowledge base's
    folder said no file matches."""
    kb = tmp_path / "kb"
    write_parquet(kb / "a\\b.parquet", id=["a"], text=["one"])
    write_parquet(kb / "c.parquet", id=["c"], text=["two"])
    (kb / "_SUCCESS").write_bytes(b"")
    expected = [str(kb / "a\\b.parquet"), str(kb / "c.parquet")]
    assert [f.path for f in match_inputs([f"{kb}/*.parquet"])] == expected
    assert [f.path for f in match_inputs([f"{kb}/"])] == expected  # a folder's files, its marker passed over
    monkeypatch.chdir(kb)
    assert [f.path for f in match_inputs(["*.parquet"])] == expected
    assert [f.path for f in match_inputs(["*"])] == expected
    monkeypatch.chdir(tmp_path)
    assert [f.path for f in match_inputs(["kb/?.parquet", "./kb/a*"])] == [str(kb / "c.parquet"), expected[0]]
    # As in a shell, no wildcard crosses a `/` (Beam's `?` and `[!x]` did), `..` past one is a name, and a
    # set of no member is written as is.
    for pattern in ("kb?c.parquet", "kb[!x]c.parquet", "kb[/]c.parquet", "kb/*/../c.parquet"):
        with pytest.raises(InputError, match="no file matches"):
            match_inputs([pattern])
    assert [bool(glob_regex("k/[!]c").match(path)) for path in ("k/[!]c", "k/xc")] == [True, False]
    assert [bool(glob_regex("k/a[b").match(path)) for path in ("k/a[b", "k/ab")] == [True, False]  # a lone [ too
    (tmp_path / "loop").symlink_to("loop")  # a folder the listing cannot enter, named with why (not a traceback)
    with pytest.raises(InputError, match=r"cannot read the folder .*/loop \(Too many levels of symbolic links\), "):
        match_inputs(["loop/*.parquet"])
    with pytest.raises(InputError) as reversed_range:
        match_inputs(["kb/[z-a].parquet"])
    assert str(reversed_range.value).startswith("--input kb/[z-a].parquet: not a glob pattern (bad character range")
    # A pattern ending in / takes in the files the job writes in the folders it names.
    assert pattern_reaches("runs/*/", str(tmp_path / "runs" / "day2" / "embeddings-00000-of-00001.parquet"))
    with pytest.raises(InputError, match="^--input file://.*: write a local file's path without file://$"):
        match_inputs([f"file://{kb}/*.parquet"])


def test_the_plan_lists_each_local_folder_once_besides_beams_listing(tmp_path, monkeypatch):
    """A `**` pattern's tree was walked three times by the plan besides Beam's own listing (the folders
    it cannot read, the links to folders, the links again for the output's check), a cost a tree on a
    network disk pays per folder. Now once, besides Beam's."""
    kb, elsewhere = tmp_path / "kb", tmp_path / "elsewhere"
    for team in ("team-b", "team-c"):
        write_parquet(kb / team / "2026" / f"{team}.parquet", id=[team], text=["one"])
    write_parquet(elsewhere / "team-a" / "a.parquet", id=["a"], text=["two"])
    (kb / "team-c" / "team-a").symlink_to(elsewhere / "team-a")
    listed = Counter()
    scandir = os.scandir

    def counted(path="."):
        listed[os.path.realpath(path)] += 1
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    options = make_options(["--input", f"{kb}/**/*.parquet", "--output", str(tmp_path / "out"), "--plan_only"])
    planned = plan_job(options)
    assert [f.path for f in planned.input_files] == [
        str(kb / "team-b" / "2026" / "team-b.parquet"),
        str(kb / "team-c" / "2026" / "team-c.parquet"),
        str(kb / "team-c" / "team-a" / "a.parquet"),
    ]
    beams = {
        str(kb),
        *(str(kb / team) for team in ("team-b", "team-c")),
        *(str(kb / t / "2026") for t in ("team-b", "team-c")),
    }
    assert {folder: listed[folder] for folder in beams} == dict.fromkeys(beams, 2)  # Beam's os.walk, then the plan's
    assert listed[str(elsewhere / "team-a")] == 2  # for the pattern, and for `pattern/**` (a dataset folder's)


def test_a_file_or_folder_name_that_is_not_utf8_is_refused_naming_it_before_any_worker_starts(tmp_path):
    """A shard named in Latin-1 (caf\\xe9.parquet, from an SMB share) passed the plan and failed every run in
    the workers (UnicodeEncodeError in a Beam traceback) without naming the file; an --output so named failed
    as the run was published. The calibration, which names no file, reads such a shard."""
    kb = tmp_path / "kb"
    write_parquet(kb / "a.parquet", id=[1], text=["one"])
    write_parquet(tmp_path / "b.parquet", id=[2], text=["two"]).rename(os.fsdecode(bytes(kb) + b"/caf\xe9.parquet"))
    assert len(match_inputs([f"{kb}/*.parquet"])) == 2
    result = run_cli("--input", f"{kb}/*.parquet", "--output", str(tmp_path / "out"), "--plan_only")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {kb}/caf\\xe9.parquet: a path that is not UTF-8, which the job cannot name in its outputs and "
        "messages (matched by --input); rename it"
    )
    output = os.fsdecode(bytes(tmp_path) + b"/out\xe9")
    result = run_cli("--input", str(kb / "a.parquet"), "--output", output)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --output {tmp_path}/out\\xe9: a path that is not UTF-8, which the manifest cannot name"
    )
    assert sorted(os.listdir(tmp_path)) == ["kb"]
