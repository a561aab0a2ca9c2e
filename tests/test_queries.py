"""Queries embedded as a run embedded its documents (pipeline.queries), against sentence-transformers' encode_query."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from encoder import ModelFolderError
from pipeline.load import LoadError
from pipeline.queries import query_encoder
from tests.conftest import ROOT, read_manifest, run_cli, run_clis, save_tiny_model, write_parquet

QUERIES = ["how often are backups taken?", "rotate api keys"]
PROMPTS = {"prompts": {"query": "query: ", "document": "passage: "}}


@pytest.fixture(scope="module")
def e5_like_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run of a model with E5's query and passage prompts, its vectors cut to 16 of 32 dimensions."""
    root = tmp_path_factory.mktemp("queries")
    model = save_tiny_model(root / "model", {}, prompts=PROMPTS)
    shard = write_parquet(root / "kb" / "part-0.parquet", id=["a", "b"], text=["Backups run nightly.", "Keys expire."])
    run = root / "run"
    options = ("--model", str(model), "--prompt_name", "document", "--truncate_dim", "16")
    result = run_cli("--input", str(shard), "--output", str(run), *options)
    assert result.returncode == 0, result.stderr
    return model, run


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_queries_take_the_models_query_prompt_and_the_runs_dimension_as_encode_query(e5_like_run):
    """Asymmetric models embed queries with their `query` prompt; a run cut to 16 dimensions
    needs 16-dimensional queries, normalised as the run's vectors are."""
    model, run = e5_like_run
    assert read_manifest(run)["model"]["prompt"] == "passage: "  # the documents' prompt
    encoder = query_encoder(str(run), device="cpu")
    assert encoder.tokenizer.prompt == "query: "
    vectors = encoder.encode(QUERIES).embeddings
    reference = SentenceTransformer(str(model), device="cpu", truncate_dim=16).encode_query(QUERIES)
    assert vectors.shape == (2, 16)
    np.testing.assert_allclose(vectors, _unit(reference), rtol=0, atol=1e-5)
    as_documents = query_encoder(str(run), device="cpu", prompt_name="document").encode(QUERIES).embeddings
    assert np.abs(as_documents - vectors).max() > 1e-3  # the prompt changes the vectors


def test_queries_of_a_model_without_a_query_prompt_take_none_as_encode_query_not_its_default_prompt(tmp_path):
    """A folder naming a default prompt and no `query` one: queries took the default prompt, where
    sentence-transformers' encode_query takes none (cosine 0.78-0.88 against it)."""
    prompts = {"prompts": {"document": "passage: "}, "default_prompt_name": "document"}
    model = save_tiny_model(tmp_path / "model", {}, prompts=prompts)
    shard = write_parquet(tmp_path / "kb" / "part-0.parquet", id=["a"], text=["Backups run nightly."])
    result = run_cli("--input", str(shard), "--output", str(tmp_path / "run"), "--model", str(model))
    assert result.returncode == 0, result.stderr
    assert read_manifest(tmp_path / "run")["model"]["prompt"] == "passage: "  # documents: the default prompt
    encoder = query_encoder(str(tmp_path / "run"), device="cpu")
    assert encoder.tokenizer.prompt == ""
    reference = SentenceTransformer(str(model), device="cpu").encode_query(QUERIES)
    np.testing.assert_allclose(encoder.encode(QUERIES).embeddings, reference, rtol=0, atol=1e-5)


def test_a_model_folder_changed_since_the_run_is_refused_and_a_moved_one_is_found_where_given(e5_like_run, tmp_path):
    model, run = e5_like_run
    moved = shutil.copytree(model, tmp_path / "moved")
    assert query_encoder(str(run), model=str(moved), device="cpu").dim == 16
    pooling = moved / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "pooling_mode_max_tokens": True}))
    expected = read_manifest(run)["model"]["folder_sha256"]
    with pytest.raises(ModelFolderError, match=f"^{moved}: its files have folder sha256 [0-9a-f]{{64}}, not the "
                       f"expected {expected} \\(the folder run {run} embedded its documents with"):  # fmt: skip
        query_encoder(str(run), model=str(moved), device="cpu")


def test_a_run_killed_midway_is_refused(tmp_path):
    """No manifest: nothing says which model its files were embedded with."""
    write_parquet(tmp_path / "embeddings-00000-of-00001.parquet", id=["a"])
    with pytest.raises(LoadError) as refused:
        query_encoder(str(tmp_path))
    assert str(refused.value) == f"{tmp_path}: no manifest.json; the run did not finish, or this is not a run's output"


def test_a_run_keeping_the_whole_vector_of_a_matryoshka_folder_gets_whole_queries(tmp_path, monkeypatch):
    """`--truncate_dim` the model's width keeps the whole vector (the manifest's truncate_dim null): the
    queries took the folder's own truncate_dim and were half as wide as the documents. A model folder the
    run was given relative to its own folder is named as such."""
    model = save_tiny_model(tmp_path / "model", {}, prompts={**PROMPTS, "truncate_dim": 16})
    shard = write_parquet(tmp_path / "kb" / "part-0.parquet", id=["a"], text=["Backups run nightly."])
    relative = os.path.relpath(model, ROOT)
    whole, folders = run_clis(
        ["--input", str(shard), "--output", str(tmp_path / "whole"), "--model", str(model), "--truncate_dim", "32"],
        ["--input", str(shard), "--output", str(tmp_path / "relative"), "--model", relative],
    )
    assert (whole.returncode, folders.returncode) == (0, 0), whole.stderr + folders.stderr
    assert read_manifest(tmp_path / "whole")["model"]["truncate_dim"] is None
    vectors = query_encoder(str(tmp_path / "whole"), device="cpu").encode(QUERIES).embeddings
    reference = SentenceTransformer(str(model), device="cpu", truncate_dim=32).encode_query(QUERIES)
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(vectors, _unit(reference), rtol=0, atol=1e-5)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFolderError) as refused:
        query_encoder(str(tmp_path / "relative"))
    assert str(refused.value).endswith(
        f" (run {tmp_path / 'relative'} names its model folder {relative!r}, relative to the folder it ran in: "
        "pass model= where that folder is)"
    )
    assert query_encoder(str(tmp_path / "relative"), model=str(model), device="cpu").dim == 16
