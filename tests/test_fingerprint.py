"""The model fingerprint covers every file that shapes the vectors, so yesterday's vectors are
reused exactly when today's model would give the same ones; and the folder can be pinned."""

from __future__ import annotations

import json
import shutil

import pytest

from encoder.folder_digest import folder_sha256
from tests.conftest import TINY_POOLINGS, read_manifest, record, run_cli, save_tiny_model, write_parquet

ROWS = {"id": [1, 2, 3], "text": ["Reset the VPN Token", "Billing API returns 502", "ok"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Day 1 on a tiny model; day 2 after its tokenizer stopped lower-casing; day 3 after its README changed."""
    root = tmp_path_factory.mktemp("fingerprint")
    model = save_tiny_model(root / "model", TINY_POOLINGS["mean"])
    inputs = write_parquet(root / "in" / "a.parquet", **ROWS)
    digests = {"day1": folder_sha256(model)}

    def job(day: str, previous: str | None) -> None:
        args = ["--input", str(inputs), "--output", str(root / day), "--model", str(model)]
        result = run_cli(*args, *(["--previous", str(root / previous)] if previous else []))
        assert result.returncode == 0, result.stderr
        digests[day] = folder_sha256(model)

    job("day1", None)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    assert tokenizer["normalizer"]["lowercase"] is True
    tokenizer["normalizer"]["lowercase"] = False
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    job("day2", "day1")
    (model / "README.md").write_text("# A model card edited by hand\n")
    job("day3", "day2")
    return {"root": root, "model": model, "digests": digests}


def test_a_changed_tokenizer_file_changes_the_fingerprint_and_reembeds_every_row(runs):
    day1, day2 = (read_manifest(runs["root"] / day) for day in ("day1", "day2"))
    assert day1["model"]["weights_sha256"] == day2["model"]["weights_sha256"]  # same weights ...
    assert day1["model"]["folder_sha256"] == runs["digests"]["day1"]
    assert day2["model"]["folder_sha256"] == runs["digests"]["day2"] != runs["digests"]["day1"]
    assert day1["model"]["fingerprint"] != day2["model"]["fingerprint"]  # ... but another tokenizer
    assert (day2["rows_in"], day2["rows_embedded"], day2["rows_reused"]) == (3, 3, 0)
    assert day2["previous"]["vectors_reused"] is False
    record("input", "model tokenizer changed since --previous", "every row re-embedded")


def test_documentation_in_the_model_folder_does_not_change_the_fingerprint(runs):
    day2, day3 = (read_manifest(runs["root"] / day) for day in ("day2", "day3"))
    assert day3["model"]["folder_sha256"] == day2["model"]["folder_sha256"]
    assert (day3["rows_embedded"], day3["rows_reused"]) == (0, 3)


def test_expected_folder_digest_is_enforced(runs, tmp_path):
    model, digest = runs["model"], runs["digests"]["day3"]
    args = ["--input", f"{runs['root']}/in/*.parquet", "--output", str(tmp_path / "out"), "--model", str(model)]
    wrong = run_cli(*args, "--plan_only", "--model_folder_sha256", "0" * 64)
    assert wrong.returncode == 1
    assert f"its files have folder sha256 {digest}, not the expected {'0' * 64}" in wrong.stderr
    right = run_cli(*args, "--plan_only", "--model_folder_sha256", digest.upper())
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["model"]["folder_sha256"] == digest
    record("security", "--model_folder_sha256 of another folder", "job refuses to start")


def test_digest_covers_module_folders_and_skips_others(tmp_path, runs):
    model = tmp_path / "model"
    shutil.copytree(runs["model"], model)
    before = folder_sha256(model)
    (model / "onnx").mkdir()
    (model / "onnx" / "model.onnx").write_bytes(b"an export the job never loads")
    assert folder_sha256(model) == before
    config = json.loads((model / "1_Pooling" / "config.json").read_text())
    (model / "1_Pooling" / "config.json").write_text(json.dumps({**config, "pooling_mode_max_tokens": True}))
    assert folder_sha256(model) != before
