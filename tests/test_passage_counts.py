"""The manifest's passage counts: per passage overlaps, and only the documents the join keeps."""

from __future__ import annotations

import numpy as np
from transformers import AutoTokenizer

from encoder.passages import PassageSplitter
from samples.long_documents import long_documents
from tests.conftest import read_manifest, run_cli, write_parquet
from transforms.model_store import default_model_path


def test_each_passage_records_the_tokens_it_repeats_from_the_one_before():
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())

    def count(texts: list[str]) -> np.ndarray:
        return np.array([len(tokenizer(t)["input_ids"]) for t in texts], np.int64)

    texts = [text for _, text in long_documents(min_chars=6000)[:2]] + ["Short.", ""]
    passages = PassageSplitter(tokenizer.backend_tokenizer, 64, 8, count).split(texts)
    assert passages.overlaps.dtype == np.int64 and len(passages.overlaps) == len(passages.chunk)
    assert (passages.overlaps[passages.chunk == 0] == 0).all()
    assert (passages.overlaps[passages.chunk > 0] > 0).all() and (passages.overlaps <= 8).all()
    assert passages.overlap_tokens == int(passages.overlaps.sum())


def test_a_duplicate_ids_passages_are_not_in_the_manifests_passage_counts(tmp_path):
    """The second row of an id is rejected as duplicate_id: its passages are not written, so they
    count neither in passages.per_document nor in passages.overlap_tokens (they did: max 101,
    overlap_tokens 738, for two written passages of one short text each)."""
    long_text = long_documents(min_chars=6000)[0][1]
    data = write_parquet(
        tmp_path / "in" / "a.parquet", id=["a", "a", "b"], text=["Short one.", long_text, "Another short one."]
    )
    result = run_cli(
        "--input", str(data), "--output", str(tmp_path / "out"), "--chunk_tokens", "64", "--chunk_overlap", "8"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "out")
    assert manifest["rejected_by_reason"] == {"duplicate_id": 1} and manifest["rows_out"] == 2
    assert manifest["passages"]["per_document"] == {"min": 1, "median": 1.0, "max": 1}
    assert manifest["passages"]["overlap_tokens"] == 0
