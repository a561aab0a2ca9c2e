"""The model fingerprint covers every file that shapes the vectors, so yesterday's vectors are
reused exactly when today's model would give the same ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encoder import ModelFolderError, read_model_folder
from encoder.folder_digest import folder_sha256, shaping_files
from pipeline.plan import ENCODER_FIX_KEYS, model_fingerprint
from tests.conftest import (
    TINY_POOLINGS,
    embedding_rows,
    read_manifest,
    record,
    run_cli,
    save_tiny_model,
    write_parquet,
)
from tests.test_reference_edges import save_prompt_filling_the_window, save_xlnet

ROWS = {"id": [1, 2, 3], "text": ["Reset the VPN Token", "Billing API returns 502", "ok"]}
# all-MiniLM-L6-v2's on CPU, as runs before ENCODER_FIX_KEYS recorded it.
DEFAULT_FINGERPRINT = "bd264a39add71cecf4a8efd00a3dc087993e3a05458b78415c11ecea8b94eb33"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Day 1 on a tiny model; day 2 after two words swapped token ids in its tokenizer.json; day 3 after
    its README changed."""
    root = tmp_path_factory.mktemp("fingerprint")
    model = save_tiny_model(root / "model", TINY_POOLINGS["mean"])
    inputs = write_parquet(root / "in" / "a.parquet", **ROWS)
    digests, stderr = {}, {}

    def job(day: str, previous: str | None, *extra: str) -> None:
        digests[day] = folder_sha256(model)
        args = ["--input", str(inputs), "--output", str(root / day), "--model", str(model), *extra]
        result = run_cli(*args, *(["--previous", str(root / previous)] if previous else []))
        assert result.returncode == 0, result.stderr
        stderr[day] = result.stderr

    job("day1", None)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["reset"], vocab["ok"] = vocab["ok"], vocab["reset"]  # rows 1 and 3 get other tokens, row 2 the same
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    job("day2", "day1")
    (model / "README.md").write_text("# A model card edited by hand\n")
    job("day3", "day2")
    job("day4", "day3", "--truncate_dim", str(json.loads((model / "config.json").read_text())["hidden_size"]))
    return {"root": root, "inputs": inputs, "digests": digests, "stderr": stderr}


def test_a_changed_tokenizer_file_changes_the_fingerprint_and_reembeds_every_row(runs):
    day1, day2 = (read_manifest(runs["root"] / day) for day in ("day1", "day2"))
    old, new = runs["digests"]["day1"], runs["digests"]["day2"]
    assert day1["model"]["weights_sha256"] == day2["model"]["weights_sha256"]  # same weights ...
    assert (day1["model"]["folder_sha256"], day2["model"]["folder_sha256"]) == (old, new) and old != new
    assert day1["model"]["fingerprint"] != day2["model"]["fingerprint"]  # ... but another tokenizer
    assert f"folder_sha256 {old!r} -> {new!r}): re-embedding every row" in runs["stderr"]["day2"]
    assert (day2["rows_in"], day2["rows_embedded"], day2["rows_reused"]) == (3, 3, 0)
    assert day2["previous"]["vectors_reused"] is False
    before, after = (embedding_rows(runs["root"] / day) for day in ("day1", "day2"))
    # Reusing day 1's vectors would have been wrong for the rows whose tokens changed.
    assert not np.allclose(before[1]["embedding"], after[1]["embedding"], atol=1e-3)  # "reset" ...
    assert not np.allclose(before[3]["embedding"], after[3]["embedding"], atol=1e-3)  # ... and "ok" swapped
    np.testing.assert_allclose(before[2]["embedding"], after[2]["embedding"], rtol=0, atol=1e-6)
    outcome = "every row re-embedded"
    assert (
        record("input", "model tokenizer changed since --previous", outcome, [runs["inputs"]], runs["root"] / "day2")
        == 0
    )


def test_documentation_in_the_model_folder_does_not_change_the_fingerprint(runs):
    day2, day3 = (read_manifest(runs["root"] / day) for day in ("day2", "day3"))
    assert runs["digests"]["day3"] == runs["digests"]["day2"]
    assert day3["model"]["fingerprint"] == day2["model"]["fingerprint"]
    assert (day3["rows_in"], day3["rows_embedded"], day3["rows_reused"]) == (3, 0, 3)
    assert day3["previous"]["vectors_reused"] is True


def test_truncating_to_the_whole_vector_is_no_change(runs):
    """`--truncate_dim` equal to the model's width writes the same vectors as none: reused, not re-embedded."""
    day3, day4 = (read_manifest(runs["root"] / day) for day in ("day3", "day4"))
    assert day4["model"]["truncate_dim"] is None and day4["model"]["dim"] == day3["model"]["dim"]
    assert day4["model"]["fingerprint"] == day3["model"]["fingerprint"]
    assert (day4["rows_in"], day4["rows_embedded"], day4["rows_reused"]) == (3, 0, 3)


def test_models_the_encoder_fixes_left_alone_keep_their_fingerprint(tmp_path):
    """Types all 0 and no prompt (all-MiniLM-L6-v2), or a prompt within the window: no key of the fixes,
    so the fingerprint is the one earlier runs recorded and their vectors keep being reused."""
    inputs = write_parquet(tmp_path / "a.parquet", **ROWS)
    args = ("--input", str(inputs), "--output", str(tmp_path / "out"), "--device", "cpu", "--plan_only")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)["model"]
    assert model["fingerprint"] == DEFAULT_FINGERPRINT
    assert model.keys() & set(ENCODER_FIX_KEYS) == set()
    result = run_cli(*args, "--model", str(save_prompt_filling_the_window(tmp_path / "model")), "--prompt", "query: ")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)["model"]
    assert not model["include_prompt"] and model.keys() & set(ENCODER_FIX_KEYS) == set()


@pytest.mark.parametrize(
    ("save", "options", "fix"),
    [
        (save_xlnet, (), {"token_types": [0, 0, 2]}),  # a one-token text, <sep> and <cls>
        (save_prompt_filling_the_window, ("--prompt_name", "query"), {"prompt_tokens": 15}),  # the window but [SEP]
    ],
    ids=["token-types", "prompt-filling-the-window"],
)
def test_a_run_from_before_an_encoder_fix_that_changed_the_models_vectors_is_reembedded_once(
    tmp_path, save, options, fix
):
    """Token types now reach the model, and a prompt is measured within the window: a run from before
    either fix holds other vectors for such a model, and its fingerprint lacked the fix's key."""
    model = save(tmp_path / "model")
    inputs = write_parquet(tmp_path / "in" / "a.parquet", **ROWS)

    def job(day: str, *previous: str) -> tuple[dict, str]:
        args = ["--input", str(inputs), "--output", str(tmp_path / day), "--model", str(model)]
        result = run_cli(*args, *options, *previous)
        assert result.returncode == 0, result.stderr
        return read_manifest(tmp_path / day), result.stderr

    day1, _ = job("day1")
    assert {key: day1["model"][key] for key in ENCODER_FIX_KEYS if key in day1["model"]} == fix
    # day1's manifest as the job wrote it before the fix: without the key, fingerprinted without it
    manifest = read_manifest(tmp_path / "day1")
    manifest["model"] = {key: value for key, value in day1["model"].items() if key not in fix}
    manifest["model"]["fingerprint"] = model_fingerprint(manifest["model"])
    (tmp_path / "day1" / "manifest.json").write_text(json.dumps(manifest))
    day2, stderr = job("day2", "--previous", str(tmp_path / "day1"))
    ((key, value),) = fix.items()
    assert f"({key} None -> {value!r}): re-embedding every row" in stderr
    assert (day2["rows_embedded"], day2["rows_reused"]) == (3, 0)
    day3, _ = job("day3", "--previous", str(tmp_path / "day2"))
    assert (day3["rows_embedded"], day3["rows_reused"]) == (0, 3)


def _digest_after(model, edit) -> str:
    edit(model)
    return folder_sha256(model)


def test_digest_covers_every_module_and_nothing_the_job_never_reads(tmp_path):
    model = save_tiny_model(tmp_path / "model", TINY_POOLINGS["mean"])
    assert [path.relative_to(model).as_posix() for path in shaping_files(model)] == [
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    before = folder_sha256(model)
    # Documentation, other formats' weights and folders no module lists: the same digest.
    (model / "README.md").write_text("# card")
    (model / "LICENSE").write_text("Apache-2.0")
    (model / ".gitattributes").write_text("*.bin filter=lfs")
    (model / "pytorch_model.bin").write_bytes(b"pickle the job refuses to load")
    (model / "tf_model.h5").write_bytes(b"TensorFlow")
    (model / "onnx").mkdir()
    (model / "onnx" / "model.onnx").write_bytes(b"an export the job never loads")
    (model / "2_Normalize" / "README.md").write_text("module notes")
    assert folder_sha256(model) == before
    # Any file of the root or of a module folder, its contents or its name: another digest.
    digests = {
        before,
        _digest_after(model, lambda m: (m / "2_Normalize" / "config.json").write_text("{}")),
        _digest_after(
            model, lambda m: (m / "1_Pooling" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
        ),
        _digest_after(model, lambda m: (m / "tokenizer_config.json").write_text("{}")),
        _digest_after(model, lambda m: (m / "2_Normalize" / "config.json").rename(m / "2_Normalize" / "other.json")),
    }
    assert len(digests) == 5


def test_digest_of_a_folder_without_modules_json_covers_its_root(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")
    assert [path.relative_to(tmp_path).as_posix() for path in shaping_files(tmp_path)] == ["config.json"]


@pytest.mark.parametrize("path", ["../elsewhere", "/etc", "1_Pooling/../../elsewhere"])
def test_module_path_leaving_the_folder_is_refused(tmp_path, path):
    model = save_tiny_model(tmp_path / "model", TINY_POOLINGS["mean"])
    modules = json.loads((model / "modules.json").read_text())
    modules[1]["path"] = path
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelFolderError, match=f"module path '{path}' leaves the model folder"):
        folder_sha256(model)
    with pytest.raises(ModelFolderError, match=f"module path '{path}' leaves the model folder"):
        read_model_folder(model)  # what a worker loads, whatever digest a command line pinned
