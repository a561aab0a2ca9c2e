"""Bad input: a clear message naming what and where, a non-zero exit, and nothing lost or half-published."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
from datetime import UTC, datetime
from functools import partial

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from encoder.tokens import WHOLE_PIECE_CHARS
from samples.model_families import save_family
from schemas.inputs import InputError
from tests.conftest import JOB, ROOT, embedding_rows, read_manifest, record, run_cli, run_clis, write_parquet
from transforms.read import PlannedFile, ReadParquetFiles


def good_shard(path, ids=("a", "b")):
    return write_parquet(path, id=list(ids), text=[f"text of {i}" for i in ids])


ID_TYPES = "ids must be strings, binaries, numbers (not float16), dates, times or UUIDs"


def assert_failed_without_output(result, output, message):
    assert result.returncode == 1, result.stderr
    assert f"error: {message}" in result.stderr
    assert (sorted(output.iterdir()) if output.exists() else []) == []  # no manifest, no files, no temp folders


def test_no_file_matches(tmp_path):
    good_shard(tmp_path / "in" / "a.parquet")
    pattern = str(tmp_path / "missing" / "*.parquet")
    result = run_cli("--input", f"{tmp_path}/in/*.parquet,{pattern}", "--output", str(tmp_path / "out"))
    assert_failed_without_output(result, tmp_path / "out", f"no file matches --input pattern '{pattern}'")


def test_the_mistakes_a_newcomer_makes_with_input_and_output_are_named(tmp_path):
    """A folder for --input, an unquoted glob the shell expanded, outputs written among the inputs."""
    good_shard(tmp_path / "kb" / "a.parquet")
    good_shard(tmp_path / "kb" / "b.parquet")
    kb, output = tmp_path / "kb", tmp_path / "out"
    result = run_cli("--input", str(kb), "--output", str(output))
    assert_failed_without_output(result, output, f"--input {kb}: a folder; pass its files, as in '{kb}/*.parquet'")
    result = run_cli("--input", str(kb / "a.parquet"), str(kb / "b.parquet"), "--output", str(output))
    assert result.returncode == 2 and result.stderr.strip().endswith(
        f"unrecognised arguments: {kb / 'b.parquet'}; quote a pattern (--input 'kb/*.parquet') so that the shell "
        "does not expand it"
    )
    result = run_cli("--input", f"{kb}/*.parquet", "--output", str(kb))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: --output {kb} holds input files ({kb / 'a.parquet'}); write the outputs to another folder"
    )
    assert sorted(path.name for path in kb.iterdir()) == ["a.parquet", "b.parquet"]
    inner = kb / "nightly" / "out"  # holds no input yet, but `**` reaches the files it would hold
    result = run_cli("--input", f"{tmp_path}/**", "--output", str(inner))
    assert_failed_without_output(
        result,
        inner,
        f"--output {inner}: the --input pattern '{tmp_path}/**' takes in files the job writes there, so the next "
        "night would read this night's outputs as input; write the outputs to a folder no pattern reaches",
    )
    assert run_cli("--input", f"{kb}/*.parquet", "--output", str(inner), "--plan_only").returncode == 0  # `*`: kb's own


def test_an_output_a_pattern_reaches_through_a_link_is_refused_the_first_night(tmp_path):
    """kb-link is a link to kb: spelled through it on either side, the output folder is where `kb/**` lists
    files, so the next night would read this night's outputs; refused before anything is written, not the
    next night (where the output then holds input files)."""
    kb = tmp_path / "kb"
    good_shard(kb / "docs" / "a.parquet")
    (tmp_path / "kb-link").symlink_to(kb, target_is_directory=True)
    through_output = [f"{kb}/**/*.parquet", tmp_path / "kb-link" / "nightly"]
    through_input = [f"{tmp_path}/kb-link/**/*.parquet", kb / "night"]
    elsewhere = [f"{kb}/**/*.parquet", tmp_path / "out"]
    commands = [["--input", pattern, "--output", str(output)] for pattern, output in (through_output, through_input)]
    results = run_clis(*commands, ["--input", elsewhere[0], "--output", str(elsewhere[1]), "--plan_only"])
    for (pattern, output), result in zip((through_output, through_input), results[:2], strict=True):
        assert_failed_without_output(
            result,
            output,
            f"--output {output}: the --input pattern {pattern!r} takes in files the job writes there, so the next "
            "night would read this night's outputs as input; write the outputs to a folder no pattern reaches",
        )
    assert results[2].returncode == 0, results[2].stderr
    assert sorted(path.name for path in kb.iterdir()) == ["docs"]


def test_an_output_a_pattern_reaches_through_a_link_below_its_wildcard_is_refused(tmp_path):
    """The pattern follows kb/team-a, a link to elsewhere/team-a, below its first wildcard: an output
    written to elsewhere/team-a/nightly is where `kb/*/*/*.parquet` lists files the next night."""
    kb, elsewhere = tmp_path / "kb", tmp_path / "elsewhere"
    good_shard(elsewhere / "team-a" / "docs" / "a.parquet")
    kb.mkdir()
    (kb / "team-a").symlink_to(elsewhere / "team-a", target_is_directory=True)
    pattern, output = f"{kb}/*/*/*.parquet", elsewhere / "team-a" / "nightly"
    result = run_cli("--input", pattern, "--output", str(output), "--plan_only")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: --output {output}: the --input pattern {pattern!r} takes in files the job writes there, so the "
        "next night would read this night's outputs as input; write the outputs to a folder no pattern reaches"
    )
    assert run_cli("--input", pattern, "--output", str(tmp_path / "out"), "--plan_only").returncode == 0
    # Below the link, `**/*.parquet` looks one folder deep, as the listing does: nightly/ is not read.
    shallow = run_cli("--input", f"{kb}/**/*.parquet", "--output", str(output), "--plan_only")
    assert shallow.returncode == 1 and "no file matches" in shallow.stderr  # team-a's file lies deeper
    (elsewhere / "team-a" / "top.parquet").write_bytes((elsewhere / "team-a" / "docs" / "a.parquet").read_bytes())
    assert run_cli("--input", f"{kb}/**/*.parquet", "--output", str(output), "--plan_only").returncode == 0


# As root, which reads any folder, the job runs without the capabilities that let it (setpriv, util-linux).
NO_READ_OVERRIDE = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]


def plans_held_by_permissions(tmp_path, patterns: list[str]) -> list[tuple[str, str, int]]:
    """`--plan_only` of each pattern at once, as a job the folders' permissions hold (as root: without the
    capabilities that override them), each (stdout, stderr, exit status)."""
    prefix = NO_READ_OVERRIDE if os.geteuid() == 0 else []
    if prefix and subprocess.run([*prefix, "true"], capture_output=True).returncode:
        pytest.skip("running as root without the capability to drop the override of folder permissions")
    started = [
        subprocess.Popen(
            [*prefix, *JOB, "--input", pattern, "--output", str(tmp_path / f"out{n}"), "--plan_only"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, pattern in enumerate(patterns)
    ]
    return [(*process.communicate(timeout=300), process.returncode) for process in started]


def test_a_folder_the_pattern_reaches_but_the_job_cannot_read_is_named_before_workers_start(tmp_path):
    """Beam's local listing passes over a folder it cannot list, and the files of one it can list but not
    enter: `kb/**/*.parquet` left kb/locked's shards out of the run without a word, and the next load deleted
    their rows from the table. A pattern that cannot reach the folder runs as before, as does one over a disk
    whose root holds the file system's own lost+found; a folder given as --input is named as one."""
    kb, disk = tmp_path / "kb", tmp_path / "disk"
    for folder in (kb, disk):
        good_shard(folder / "docs" / "a.parquet")
    good_shard(kb / "locked" / "b.parquet", ids=("c", "d"))
    good_shard(kb / "shut" / "c.parquet", ids=("e", "f"))
    (disk / "lost+found").mkdir()
    modes = {kb / "locked": 0, kb / "shut": 0o444, disk / "lost+found": 0}  # shut: listed, not entered
    refused = {
        f"{kb}/**/*.parquet": kb / "locked",
        f"{kb}/locked/b.parquet": kb / "locked",
        f"{kb}/s*/*.parquet": kb / "shut",
    }
    folders = {f"{kb}/": f"{kb}/**"}  # a folder as --input is named so, however its subfolders are locked
    accepted = {
        f"{kb}/d*/*.parquet": kb / "docs" / "a.parquet",
        f"{kb}/d**/*.parquet": kb / "docs" / "a.parquet",
        f"{disk}/**/*.parquet": disk / "docs" / "a.parquet",
    }
    for folder, mode in modes.items():
        folder.chmod(mode)
    try:
        results = plans_held_by_permissions(tmp_path, [*refused, *folders, *accepted])
    finally:
        for folder in modes:
            folder.chmod(0o755)
    for (pattern, folder), (_, stderr, code) in zip(refused.items(), results, strict=False):
        assert code == 1, stderr
        assert stderr.splitlines()[-1] == (
            f"error: --input {pattern}: cannot read the folder {folder} (Permission denied), where the pattern may "
            "match files; make it readable to this job, or write the pattern so that it does not reach it"
        )
    for (pattern, files), (_, stderr, code) in zip(folders.items(), results[len(refused) :], strict=False):
        assert code == 1, stderr
        assert stderr.splitlines()[-1] == f"error: --input {pattern}: a folder; pass its files, as in '{files}'"
    checked = len(refused) + len(folders)
    for (pattern, file), (stdout, stderr, code) in zip(accepted.items(), results[checked:], strict=True):
        assert code == 0, stderr
        assert [f["path"] for f in json.loads(stdout)["input_files"]] == [str(file)], pattern


def test_a_link_the_pattern_matches_but_the_job_cannot_follow_is_named_before_workers_start(tmp_path):
    """Beam's local listing passes over a file it cannot stat, as one gone since listed: `kb/*.parquet` with
    kb/b.parquet a link whose target was gone, or lay in a folder the job cannot enter, ran without those
    rows, and the next night deleted them. Spelled out, such a link blamed kb, which is readable; a folder
    given as --input is named as one, whatever links it holds."""
    kb, store = tmp_path / "kb", tmp_path / "store"
    good_shard(kb / "a.parquet")
    good_shard(store / "locked" / "c.parquet", ids=("c", "d"))
    (kb / "b.parquet").symlink_to(store / "b.parquet")  # its target gone
    (kb / "c.parquet").symlink_to(store / "locked" / "c.parquet")
    (kb / "_tmp.parquet").symlink_to(store / "gone.parquet")  # a writer's, hidden: passed over
    gone, locked = "No such file or directory", "Permission denied"
    refused = {
        f"{kb}/*.parquet": f"cannot read {kb}/b.parquet, a link to {store}/b.parquet ({gone}), which the pattern "
        "matches; mend or remove the link, or write the pattern so that it does not match it",
        f"{kb}/c*": f"cannot read {kb}/c.parquet, a link to {store}/locked/c.parquet ({locked}), which the pattern "
        "matches; mend or remove the link, or write the pattern so that it does not match it",
        f"{kb}/b.parquet": f"cannot read it, a link to {store}/b.parquet ({gone})",
        f"{kb}/c.parquet": f"cannot read it, a link to {store}/locked/c.parquet ({locked})",
        f"{kb}": f"a folder; pass its files, as in '{kb}/*.parquet'",  # the links are for that pattern to meet
    }
    (store / "locked").chmod(0)
    try:
        results = plans_held_by_permissions(tmp_path, [*refused, f"{kb}/a*"])
    finally:
        (store / "locked").chmod(0o755)
    for (pattern, message), (_, stderr, code) in zip(refused.items(), results, strict=False):
        assert code == 1, stderr
        assert stderr.splitlines()[-1] == f"error: --input {pattern}: {message}"
    stdout, stderr, code = results[-1]
    assert code == 0, stderr
    assert [f["path"] for f in json.loads(stdout)["input_files"]] == [str(kb / "a.parquet")]


def test_a_pipe_matched_as_an_input_is_refused_rather_than_waited_on(tmp_path):
    """Opening a FIFO waits for a writer: the plan hung until killed."""
    good_shard(tmp_path / "kb" / "a.parquet")
    os.mkfifo(tmp_path / "kb" / "b.parquet")
    result = run_cli("--input", f"{tmp_path}/kb/*.parquet", "--output", str(tmp_path / "out"), timeout=120)
    assert_failed_without_output(
        result,
        tmp_path / "out",
        f"{tmp_path}/kb/b.parquet: a pipe, socket or device, not a Parquet file "
        f"(matched by --input {tmp_path}/kb/*.parquet)",
    )


def test_missing_text_column_names_it_and_the_columns_found(tmp_path):
    path = good_shard(tmp_path / "a.parquet")
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"), "--text_column", "body")
    assert_failed_without_output(
        result, tmp_path / "out", f"{path}: column 'body' not found; columns found: 'id', 'text'"
    )


def test_missing_id_column(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", doc_id=["a"], text=["hello"])
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"))
    assert_failed_without_output(
        result, tmp_path / "out", f"{path}: column 'id' not found; columns found: 'doc_id', 'text'"
    )


def test_a_column_named_twice_is_named_as_such(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(
        pa.Table.from_arrays([pa.array(["a"]), pa.array(["x"]), pa.array(["y"])], ["id", "text", "text"]), path
    )
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"))
    assert_failed_without_output(
        result, tmp_path / "out", f"{path}: column 'text' appears more than once; columns found: 'id', 'text', 'text'"
    )


def test_later_shard_missing_a_column_fails_the_job(tmp_path):
    good_shard(tmp_path / "in" / "a.parquet")
    bad = write_parquet(tmp_path / "in" / "b.parquet", id=["c"], body=["hello"])
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"))
    assert_failed_without_output(
        result, tmp_path / "out", f"{bad}: column 'text' not found; columns found: 'id', 'body'"
    )


def test_corrupt_shard_fails_the_job_and_names_the_file(tmp_path):
    good_shard(tmp_path / "in" / "a.parquet")
    corrupt = tmp_path / "in" / "b.parquet"
    corrupt.write_bytes(good_shard(tmp_path / "b.parquet").read_bytes()[:300])  # cut short
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"))
    assert_failed_without_output(result, tmp_path / "out", f"{corrupt}: not a readable Parquet file")


def test_corrupt_first_shard_fails_before_the_pipeline_starts(tmp_path):
    corrupt = tmp_path / "a.parquet"
    corrupt.write_bytes(b"this is not parquet")
    result = run_cli("--input", str(corrupt), "--output", str(tmp_path / "out"))
    assert_failed_without_output(result, tmp_path / "out", f"{corrupt}: not a readable Parquet file")


def test_id_type_differing_between_shards_fails(tmp_path):
    good_shard(tmp_path / "in" / "a.parquet")
    bad = write_parquet(tmp_path / "in" / "b.parquet", id=[1], text=["hello"])
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"))
    assert_failed_without_output(result, tmp_path / "out", f"{bad}: column 'id' is int64, but other shards have string")


def test_rows_that_cannot_be_embedded_are_rejected_with_a_reason(tmp_path):
    first = write_parquet(
        tmp_path / "in" / "a.parquet",
        id=["ok-1", None, "null", "empty", "blank", "ok-2", "ideographic-space"],
        text=["fine", "no id", None, "", " \t\r\n ", "also fine", "\u3000"],
    )
    numbers = write_parquet(tmp_path / "in" / "b.parquet", id=["n-1", "n-2"], text=pa.array([1, None], pa.int64()))
    output = tmp_path / "out"
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(output))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert manifest["rows_in"] == 9
    assert manifest["rows_embedded"] == 2
    assert manifest["rejected_by_reason"] == {"empty_text": 3, "null_id": 1, "null_text": 2, "text_not_string": 1}
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert sorted((r["source_file"], r["row_number"], r["id"], r["reason"]) for r in rejected) == [
        (str(first), 1, None, "null_id"),
        (str(first), 2, "null", "null_text"),
        (str(first), 3, "empty", "empty_text"),
        (str(first), 4, "blank", "empty_text"),
        (str(first), 6, "ideographic-space", "empty_text"),
        (str(numbers), 0, "n-1", "text_not_string"),
        (str(numbers), 1, "n-2", "null_text"),
    ]
    assert sorted(pq.read_table(sorted(output.glob("embeddings-*.parquet")))["id"].to_pylist()) == ["ok-1", "ok-2"]


def test_an_id_column_named_like_a_column_of_the_rejects_is_refused_before_workers_start(tmp_path):
    """The rejects files hold the id beside their own columns: an id named `reason` gave them two columns
    of that name, which pandas and pyarrow refuse to read, and the run exited 0."""
    for name in ("source_file", "row_number", "reason", "column"):
        path = write_parquet(tmp_path / name / "a.parquet", **{name: ["a", "b"]}, text=["fine", ""])
        output = tmp_path / name / "out"
        result = run_cli("--input", str(path), "--output", str(output), "--id_column", name)
        assert_failed_without_output(result, output, "")
        assert result.stderr.splitlines()[-1] == (
            f"error: --id_column {name!r}: the rejects files write a column of that name beside the id "
            "('source_file', 'row_number', 'reason', 'column'); rename the id column in the input"
        )
        assert "Worker" not in result.stderr


def test_every_row_rejected_still_publishes_empty_typed_outputs(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", id=["a", "b"], text=[None, ""])
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (2, 0, 2)
    embedded = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    assert embedded.num_rows == 0
    assert embedded.schema.field("embedding").type == pa.list_(pa.float32(), 384)


def test_earlier_run_is_not_mixed_with_a_new_one(tmp_path):
    path = good_shard(tmp_path / "a.parquet")
    output = tmp_path / "out"
    assert run_cli("--input", str(path), "--output", str(output)).returncode == 0
    (output / "embeddings-00007-of-00009.parquet").write_bytes(b"stale shard of an older run")
    files = len(list(output.iterdir()))
    again = run_cli("--input", str(path), "--output", str(output))
    assert again.returncode == 1
    assert (
        f"error: {output} already holds a finished run's outputs ({files} files); pass --overwrite to replace them"
        in again.stderr
    )
    replaced = run_cli("--input", str(path), "--output", str(output), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (output / "embeddings-00007-of-00009.parquet").exists()
    assert read_manifest(output)["rows_embedded"] == 2


def test_output_with_glob_characters_is_refused_before_anything_is_deleted(tmp_path):
    path = good_shard(tmp_path / "a.parquet")
    other = tmp_path / "run1"
    assert run_cli("--input", str(path), "--output", str(other)).returncode == 0
    before = sorted(p.name for p in other.iterdir())
    for output in (tmp_path / "run[1]", tmp_path / "run?", tmp_path / "run*"):
        result = run_cli("--input", str(path), "--output", str(output), "--overwrite")
        assert result.returncode == 2  # a malformed command line
        assert (
            f"error: --output {str(output)!r} holds a glob character (* ? or [): Beam's file sink reads its "
            "output path as a pattern; choose a directory name without them" in result.stderr
        )
        assert not output.exists()
    assert sorted(p.name for p in other.iterdir()) == before


@pytest.mark.parametrize("output", ["gs://kb", "gs://kb/"])
def test_a_buckets_root_as_output_is_refused_in_one_line(tmp_path, output):
    """Beam's GCS paths name an object below the bucket: the check that --output is no file failed with a
    traceback (`GCS path must be in the form gs://<bucket>/<object>`) and then told to run again."""
    result = run_cli("--input", str(good_shard(tmp_path / "a.parquet")), "--output", output, "--plan_only")
    assert result.returncode == 2
    assert result.stderr == f"error: --output {output} is a bucket's root; give a folder in it (gs://kb/embeddings)\n"


def test_pickle_only_model_is_refused(tmp_path, model_path):
    model = tmp_path / "model"
    shutil.copytree(model_path, model)
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    path = good_shard(tmp_path / "a.parquet")
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"), "--model", str(model))
    assert_failed_without_output(result, tmp_path / "out", f"{model}: only pickle weights (pytorch_model.bin) found")
    record("security", "model with pickle weights only", "refused before any worker starts")


def test_a_model_whose_weights_were_cut_short_is_refused_before_workers_start(tmp_path):
    """A copy cut short (a full disk, an interrupted download) failed in the workers, and the failure
    said that running the command again would finish the job."""
    model = save_family("bert", tmp_path / "model", size="tiny")
    weights = model / "model.safetensors"
    whole = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: whole // 2])
    path = good_shard(tmp_path / "a.parquet")
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"), "--model", str(model))
    message = f"{weights}: not a whole safetensors file ({whole // 2} bytes, of the {whole} its header describes)"
    assert_failed_without_output(result, tmp_path / "out", message + "; copy the model again")


@pytest.mark.parametrize(
    "ids, named",
    [
        (pa.array([[1], [2]]), "list<element: int64>; " + ID_TYPES),
        (
            pa.ExtensionArray.from_storage(pa.opaque(pa.list_(pa.int64()), "shape", "gis"), pa.array([[1], [2]])),
            "extension<arrow.opaque[storage_type=list<item: int64>, type_name=shape, vendor_name=gis]>; " + ID_TYPES,
        ),
    ],
    ids=["list", "extension-of-lists"],
)
def test_an_id_column_of_lists_or_an_extension_type_of_them_is_refused_before_workers_start(tmp_path, ids, named):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": ids, "text": ["one", "two"]}), path)
    result = run_cli("--input", str(path), "--output", str(tmp_path / "out"))
    assert_failed_without_output(result, tmp_path / "out", f"{path}: id column 'id' is {named}")


def test_an_id_type_a_later_shard_gave_names_that_shard(tmp_path):
    """The first shard's ids all null, the run takes its id type from the next shard holding ids: the
    refusal of that type named the first shard, which holds int64 ids."""
    write_parquet(tmp_path / "in" / "a.parquet", id=pa.array([None, None], pa.int64()), text=["one", "two"])
    lists = write_parquet(tmp_path / "in" / "b.parquet", id=pa.array([[1], [2]]), text=["three", "four"])
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"))
    assert_failed_without_output(
        result, tmp_path / "out", f"{lists}: id column 'id' is list<element: int64>; {ID_TYPES}"
    )


@pytest.mark.parametrize("passages", [("--chunk_tokens", "128"), ()], ids=["passages", "rows"])
def test_rejects_after_an_earlier_reject_name_their_own_row(tmp_path, passages):
    """duplicate_id and no_tokens are found after validation has dropped rows: they must still name
    the row's place in the file, not its place among the rows left."""
    path = write_parquet(
        tmp_path / "a.parquet",
        id=["z", "a", "a", "n", "c-1", "g", "c-2"],
        text=["", "first", "second", None, "\x01\x02", "good", "\x03"],
    )
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output), *passages, "--carry_columns", "text")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (7, 2, 5)
    if passages:
        outcome = "rows rejected, each naming its own row"
        assert record("input", "duplicate id / no tokens after rejected rows", outcome, [path], output) == 0
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert sorted((r["row_number"], r["id"], r["reason"]) for r in rejected) == [
        (0, "z", "empty_text"),
        (2, "a", "duplicate_id"),
        (3, "n", "null_text"),
        (4, "c-1", "no_tokens"),
        (6, "c-2", "no_tokens"),
    ]
    embedded = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    assert sorted(zip(embedded["id"].to_pylist(), embedded["text"].to_pylist(), strict=True)) == [
        ("a", "first"),
        ("g", "good"),
    ]


def test_texts_the_tokenizer_drops_whole_are_rejected_as_no_tokens_and_any_other_is_embedded(tmp_path):
    """Zero-width spaces, a byte-order mark, a lone accent: each was embedded as the empty text, all
    to one vector that ties every such row in a search. Emoji, punctuation and CJK are tokens."""
    many = "\u200b" * (WHOLE_PIECE_CHARS + 10)  # asked of in pieces: whole, a 32 Mi one took 3.9 GB
    dropped = {"zwsp": "\u200b\u200b", "nul": "\x00", "bom": "\ufeff", "joiner": "\u2060", "accent": "\u0301",
               "replacement": "\ufffd", "mixed": "\u200b \x00\t\u0301", "many": many}  # fmt: skip
    kept = {"emoji": "\U0001f600", "bang": "!!!", "cjk": "\u6771\u4eac", "digit": "\u200b7", "word": "restore a backup",
            "late": many + "!"}  # fmt: skip
    path = write_parquet(tmp_path / "a.parquet", id=[*dropped, *kept], text=[*dropped.values(), *kept.values()])
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rejected_by_reason"]) == (14, 6, {"no_tokens": 8})
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert sorted((r["row_number"], r["id"], r["reason"]) for r in rejected) == [
        (row, key, "no_tokens") for row, key in enumerate(dropped)
    ]
    assert sorted(embedding_rows(output)) == sorted(kept)


def test_nan_ids_are_rejected_and_the_counts_add_up(tmp_path):
    """NaN equals nothing, so it cannot be an id: each NaN row is rejected with its own reason
    (two of them used to fail the run at the end, naming no file). Row 4 also checks that a
    duplicate after earlier rejects names its own row."""
    path = write_parquet(
        tmp_path / "a.parquet",
        id=pa.array([float("nan"), 1.0, float("nan"), None, 1.0, 2.0], pa.float64()),
        text=["t0", "t1", "t2", "t3", "t4", "t5"],
    )
    output = tmp_path / "out"
    result = run_cli("--input", str(path), "--output", str(output), "--carry_columns", "text")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (6, 2, 4)
    assert manifest["rejected_by_reason"] == {"nan_id": 2, "null_id": 1, "duplicate_id": 1}
    assert record("input", "float ids, two of them NaN", "rows rejected: nan_id", [path], output) == 0
    rejected = pq.read_table(sorted(output.glob("rejected-*.parquet"))).to_pylist()
    assert sorted((r["source_file"], r["row_number"], r["reason"]) for r in rejected) == [
        (str(path), 0, "nan_id"),
        (str(path), 2, "nan_id"),
        (str(path), 3, "null_id"),
        (str(path), 4, "duplicate_id"),
    ]
    embedded = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    assert sorted(zip(embedded["id"].to_pylist(), embedded["text"].to_pylist(), strict=True)) == [
        (1.0, "t1"),
        (2.0, "t5"),
    ]


def _later(path) -> None:
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def _rewrite(path) -> None:
    """Rewrite a shard as an upstream job writing late would: another row group layout, a later time."""
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), path, row_group_size=3)
    _later(path)


def _after_listing(schema, path, marker, change) -> None:
    """A schema check that, the first time it runs, changes the file it checks: after its row
    groups were listed from the footer, before one is read."""
    if not marker.exists():
        marker.touch()
        change(path)


def _version(stat) -> str:
    return f"{stat.st_size} bytes, modified {datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()}"


@pytest.mark.parametrize(
    "change, seen, moment",
    [
        (_rewrite, "when the job was planned", "when its row groups were listed"),
        (_later, "when the job was planned", "when its row groups were listed"),  # same size, rewritten
        (_rewrite, "when its row groups were listed", "after row groups 0-1 were read"),  # read as one span
        (_later, "when its row groups were listed", "after row groups 0-1 were read"),  # same size, rewritten
    ],
)
def test_a_shard_replaced_after_the_plan_fails_the_job_naming_the_file_and_both_versions(
    tmp_path, change, seen, moment
):
    """Row group 1 of another version of the file would repeat or drop rows without a word."""
    path = tmp_path / "in" / "kb.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": ["w", "x", "y", "z"]}), path, row_group_size=2)
    before = os.stat(path)
    planned = PlannedFile(str(path), before.st_size, before.st_mtime)
    if seen.endswith("planned"):  # between the plan and the pipeline
        change(path)
        check = None
    else:
        check = partial(_after_listing, marker=tmp_path / "changed", change=change)
    with pytest.raises(InputError) as failure:
        with beam.Pipeline(runner=FnApiRunner()) as pipeline:
            _ = pipeline | ReadParquetFiles([planned], ["id", "text"], check or (lambda schema, path: None), 10)
    assert str(failure.value).startswith(
        f"{path}: replaced by another process while the job read it ({_version(before)} {seen}; "
        f"{_version(os.stat(path))} {moment}); run the job again once that writer has finished"
    )


def test_a_daylight_saving_shift_is_another_version_unless_the_time_read_fits_both():
    """Launcher and workers hold UTC times (transforms.object_times), so a time an hour off is another
    version; only a gs:// or azfs:// time read near a spring daylight-saving change fits two times a
    shift apart, and then either is the file as planned, whichever side read it."""
    planned = PlannedFile("gs://kb/a.parquet", 100, 1_790_000_000.25)
    versions = [(100, 0), (100, 3600), (100, -3600), (100, 1800), (100, 1), (100, 3600.5), (99, 0)]
    listed = [PlannedFile(planned.path, size, planned.modified + shift) for size, shift in versions]
    assert [planned.listed_as_planned(file) for file in [*listed, None]] == [True] + [False] * 7
    two = PlannedFile(planned.path, 100, planned.modified, planned.modified + 3600)
    assert [two.listed_as_planned(file) for file in listed] == [True, True] + [False] * 5
    assert [file.listed_as_planned(two) for file in listed] == [True, True] + [False] * 5


def test_an_output_the_job_cannot_write_to_fails_before_workers_start(tmp_path):
    good_shard(tmp_path / "in" / "a.parquet")
    (tmp_path / "a-file").write_text("not a folder")
    output = tmp_path / "a-file" / "out"
    result = run_cli("--input", str(tmp_path / "in" / "a.parquet"), "--output", str(output))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"error: --output {output}: cannot write there (")
    assert "Traceback" not in result.stderr and "Worker" not in result.stderr


def test_an_output_the_disk_cannot_hold_is_named_in_one_line_without_tracebacks(tmp_path):
    """A full disk (here: files capped at 64 KB, the size limit's signal ignored, so that writes fail as on
    a full disk) failed the run with 558 lines of tracebacks, four workers' and the launcher's, and a last
    line that named no path: `the job failed (RuntimeError: RuntimeError: OSError: ...)`. Workers in
    processes and in threads of the launcher alike; the latter's run could also abort as it exited (134)."""
    write_parquet(
        tmp_path / "kb" / "a.parquet", id=[f"id{i}" for i in range(200)], text=[f"text {i}" for i in range(200)]
    )

    def capped() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    started = {}
    for mode in ("multi_processing", "multi_threading"):
        command = [*JOB, "--input", f"{tmp_path}/kb/*.parquet", "--output", str(tmp_path / mode),
                   "--direct_running_mode", mode, "--direct_num_workers", "2"]  # fmt: skip
        started[mode] = subprocess.Popen(
            command, cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=capped, start_new_session=True
        )
    for mode, job in started.items():
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 1, (mode, stderr)
        lines = stderr.splitlines()
        assert lines[-1] == (
            f"error: --output {tmp_path / mode} could not be written (OSError: [Errno 27] File too large, in step "
            "WriteEmbedded/WriteParquet/WriteImpl/WriteBundles); no manifest.json was written, so nothing was "
            "published; running the same command again, once it can write there, replaces the partial files"
        )
        assert "Traceback" not in stderr, (mode, stderr)
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ", line) for line in lines[:-1])
        assert list((tmp_path / mode).iterdir()) == []
