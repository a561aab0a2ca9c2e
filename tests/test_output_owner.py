"""The output directory's owner file (transforms.output_owner) on a real local folder: what a
run finds when it starts, and the manifest step retried after it published."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.localfilesystem import LocalFileSystem

from pipeline.plan import prepare_output
from schemas.inputs import InputError
from transforms.output_owner import OWNER_FILE, OutputOwner, OutputTakenOver
from transforms.write import CHANGES_DIR, MANIFEST, _write_manifest, output_files, remove_temp_files, remove_unlisted

STARTED = "2026-12-03T10:00:00+00:00"


def test_a_run_replaces_an_unreadable_owner_file_instead_of_refusing_to_start(tmp_path, caplog):
    (tmp_path / OWNER_FILE).write_text('{"run_id": "half a fi')  # written by hand, or cut short
    owner = OutputOwner(str(tmp_path), "run-b")
    owner.take(STARTED)
    assert json.loads((tmp_path / OWNER_FILE).read_text())["run_id"] == "run-b" and owner.holds()
    assert f"replacing an unreadable {OWNER_FILE}" in caplog.text


def test_a_run_replacing_another_names_it_in_a_warning(tmp_path, caplog):
    OutputOwner(str(tmp_path), "run-a").take(STARTED)
    OutputOwner(str(tmp_path), "run-b").take(STARTED)
    assert f"taken over from run run-a (started {STARTED} on " in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [OWNER_FILE]  # no temporary file left


def test_the_manifest_step_retried_after_it_published_changes_nothing(tmp_path):
    """A worker lost after the manifest was renamed into place, before the runner recorded the
    step done: the retry finds this run's manifest and only lets go of the directory (before,
    it would have found no owner file and failed the finished run as taken over)."""
    owner = OutputOwner(str(tmp_path), "run-a")
    owner.take(STARTED)
    published = json.dumps({"run_id": "run-a", "rows_in": 3})
    (tmp_path / MANIFEST).write_text(published)
    assert _write_manifest(None, owner, {}, Counter()) == str(tmp_path / MANIFEST)
    assert (tmp_path / MANIFEST).read_text() == published
    assert not (tmp_path / OWNER_FILE).exists()
    assert _write_manifest(None, owner, {}, Counter()) == str(tmp_path / MANIFEST)  # and again, with none


def test_only_files_a_manifest_does_not_list_are_removed_before_it_is_published(tmp_path):
    """What an overlapping run renamed into place goes; this run's files stay, in a folder named
    like the change set's too."""
    output = tmp_path / "changes"
    (output / "changes").mkdir(parents=True)
    ours = [
        "embeddings-00000-of-00001.parquet",
        "rejected-00000-of-00001.parquet",
        "changes/upserts-00000-of-00001.parquet",
    ]
    theirs = ["embeddings-00000-of-00002.parquet", "changes/deletes-00001-of-00002.parquet", MANIFEST]
    for name in [*ours, *theirs, "notes.txt"]:
        (output / name).write_text(name)
    assert list(output_files(str(output)))[0] == MANIFEST  # deleted first: never a manifest without its files
    remove_unlisted(str(output), {"embeddings": ours[:1], "rejected": ours[1:2], "upserts": ours[2:]})
    left = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())
    assert left == sorted([*ours, "notes.txt"])


class _TakenOverBeforeRenaming(OutputOwner):
    """A run whose directory another run takes at its last check: after it wrote its manifest, before
    it renamed it into place (the other run acts in earnest, on the real folder)."""

    def __init__(self, output: str, run_id: str) -> None:
        super().__init__(output, run_id)
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if self.checks == 3:
            OutputOwner(self.output, "run-b").take(STARTED)
        super().check()


def test_a_run_taken_over_before_renaming_its_manifest_leaves_no_manifest_behind(tmp_path):
    owner = _TakenOverBeforeRenaming(str(tmp_path), "run-a")
    owner.take(STARTED)
    header = {"model": {}, "timings": {"started_at": STARTED}}
    with pytest.raises(OutputTakenOver, match="taken over by run run-b"):
        _write_manifest(None, owner, header, Counter())
    assert owner.checks == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [OWNER_FILE]  # run-b's, and nothing of run-a's


def test_a_manifest_a_stopped_run_never_renamed_is_removed_with_the_temporary_files(tmp_path):
    """Killed between writing it and renaming it: the next run into the folder removes it."""
    (tmp_path / f"{MANIFEST}.run-a.tmp").write_text("{}")
    (tmp_path / "beam-temp-embeddings-1234").mkdir()
    (tmp_path / "notes.tmp").write_text("not ours")
    remove_temp_files(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


@pytest.mark.parametrize("inside", [[], ["beam-temp-upserts-1234/part.parquet"]])
def test_a_stopped_run_with_a_change_set_leaves_no_empty_changes_folder(tmp_path, inside):
    """A run with --previous stopped early (SIGTERM 14 s in) left `changes/` behind, empty or holding
    only Beam's temporary folder; one holding anything else is kept."""
    for name in inside:
        (tmp_path / CHANGES_DIR / name).parent.mkdir(parents=True)
        (tmp_path / CHANGES_DIR / name).write_text("")
    (tmp_path / CHANGES_DIR).mkdir(exist_ok=True)
    remove_temp_files(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / CHANGES_DIR).mkdir()
    (tmp_path / CHANGES_DIR / "notes.txt").write_text("not ours")
    remove_temp_files(str(tmp_path))
    assert [p.name for p in (tmp_path / CHANGES_DIR).iterdir()] == ["notes.txt"]


def test_overwriting_a_run_with_a_change_set_leaves_no_empty_changes_folder(tmp_path):
    """The README: a run without --previous writes no `changes/` folder; the replaced run's files went,
    and their folder stayed."""
    (tmp_path / CHANGES_DIR).mkdir()
    for name in (MANIFEST, "embeddings-00000-of-00001.parquet", f"{CHANGES_DIR}/upserts-00000-of-00001.parquet"):
        (tmp_path / name).write_text("{}")
    owner = prepare_output(str(tmp_path), overwrite=True, previous=None, run_id="run-b", started_at=STARTED)
    assert [p.name for p in tmp_path.iterdir()] == [OWNER_FILE]
    owner.release()


def test_an_overwrite_that_cannot_delete_the_manifest_deletes_nothing_else(tmp_path, monkeypatch):
    """Beam's delete goes on past a path it fails to delete: with the manifest among the others, a manifest
    that could not be deleted (a retention-held object) outlived every file it lists, a published run that
    was not there. The manifest goes alone and first; when it stays, so does the rest."""
    (tmp_path / "embeddings-00000-of-00001.parquet").write_bytes(b"rows")
    (tmp_path / MANIFEST).write_text(json.dumps({"run_id": "run-a"}))
    delete = LocalFileSystem.delete

    def held(self, paths):  # as Beam's own: the others deleted, then the failures raised together
        delete(self, [path for path in paths if not path.endswith(MANIFEST)])
        if any(path.endswith(MANIFEST) for path in paths):
            raise BeamIOError("Delete operation failed", {str(tmp_path / MANIFEST): PermissionError("held")})

    monkeypatch.setattr(LocalFileSystem, "delete", held)
    with pytest.raises(InputError, match=f"^--output {tmp_path}: cannot replace the files there \\(Delete operation"):
        prepare_output(str(tmp_path), overwrite=True, previous=None, run_id="run-b", started_at=STARTED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings-00000-of-00001.parquet", MANIFEST]
