"""Compact vectors: each dtype round-trips within its stated error; uint8 and binary are what
sentence-transformers' `quantize_embeddings` makes from the same ranges."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from encoder import PooledEncoder, read_model_folder
from encoder.folder_digest import folder_sha256
from encoder.quantize import LEVELS, CalibratedModel, Calibration, CalibrationError, Quantizer
from pipeline.calibrate import calibration_texts
from pipeline.calibrate import main as calibrate
from samples.knowledge_base import make_rows
from tests.conftest import embedding_rows, run_cli, run_clis, write_parquet


@pytest.fixture(scope="module")
def vectors(model_path) -> tuple[np.ndarray, np.ndarray]:
    """The default model's vectors of 200 calibration texts and of 100 others."""
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu")
    return (
        encoder.encode(make_rows(200, seed=1).column("text").to_pylist()).embeddings,
        encoder.encode(make_rows(100, seed=2).column("text").to_pylist()).embeddings,
    )


def test_float16_round_trips_within_half_a_unit_in_the_last_place(vectors):
    _, x = vectors
    quantizer = Quantizer("float16")
    stored = quantizer.quantize(x)
    assert stored.dtype == np.float16 and stored.shape == x.shape
    assert (np.abs(quantizer.dequantize(stored, 384) - x) <= np.abs(x) * 2.0**-11 + 2.0**-25).all()


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_int8_and_uint8_round_trip_within_half_a_step_of_the_calibrated_range(vectors, dtype):
    calibration_vectors, x = vectors
    calibration = Calibration.of(calibration_vectors)
    quantizer = Quantizer(dtype, calibration)
    stored = quantizer.quantize(x)
    assert stored.dtype == np.dtype(dtype) and stored.shape == x.shape
    low, high = np.array(calibration.minimum, np.float32), np.array(calibration.maximum, np.float32)
    step = (high - low) / LEVELS
    inside = (x >= low) & (x <= high)
    error = np.abs(quantizer.dequantize(stored, 384) - x)
    assert (error[inside] <= (step / 2 + 1e-6)[np.nonzero(inside)[1]]).all()
    assert inside.mean() > 0.95  # texts outside the calibration set mostly fall in its ranges
    clipped = np.clip(x, low, high)  # values outside are clipped to the range's ends
    assert (np.abs(quantizer.dequantize(stored, 384) - clipped) <= step / 2 + 1e-6).all()
    # uint8 levels are sentence-transformers' own from the same ranges; int8 are the same levels minus 128.
    # (Within the range; at its top end sentence-transformers' 255.0 would wrap to 0.)
    within = (x >= low) & (x < high - step / 2)
    reference = quantize_embeddings(x, "uint8", ranges=np.vstack([low, high]))[within]
    levels = stored.astype(np.int16)[within] + (128 if dtype == "int8" else 0)
    assert (levels == reference).mean() > 0.9999 and np.abs(levels - reference).max() <= 1


def test_binary_packs_the_sign_bits_as_sentence_transformers_ubinary(vectors):
    _, x = vectors
    quantizer = Quantizer("binary")
    stored = quantizer.quantize(x)
    assert stored.dtype == np.uint8 and stored.shape == (100, 48) and quantizer.width(384) == 48
    assert np.array_equal(stored, quantize_embeddings(x, "ubinary"))
    assert np.array_equal(quantizer.dequantize(stored, 384), np.where(x > 0, 1.0, -1.0).astype(np.float32))
    assert Quantizer("binary").quantize(x[:, :12]).shape == (100, 2)  # padded to whole bytes


def test_a_calibration_file_is_made_once_and_read_back_exactly(tmp_path, model_path):
    path = tmp_path / "calibration.json"
    assert calibrate(["--output", str(path), "--model", model_path, "--rows", "64", "--truncate_dim", "128"]) == 0
    calibration = Calibration.from_json(path.read_text(), str(path))
    assert calibration.texts == 64 and len(calibration.minimum) == 128
    weights = read_model_folder(model_path).weights_sha256()
    cut = "whole texts, truncated to 256 tokens"
    assert calibration.made_for == CalibratedModel(weights, "", folder_sha256(model_path), cut)  # no prompt
    assert all(lo < hi for lo, hi in zip(calibration.minimum, calibration.maximum, strict=True))
    assert Calibration.from_json(calibration.to_json(), "again") == calibration
    with pytest.raises(CalibrationError, match="the vectors have 384"):
        Quantizer("int8", calibration).check(384)
    with pytest.raises(CalibrationError, match=r"broken\.json: not a calibration file \(KeyError: 'min'\)"):
        Calibration.from_json("{}", "broken.json")
    with pytest.raises(CalibrationError) as binary:  # a Parquet file passed by mistake: no bytes in the message
        Calibration.from_json(b"PAR1" + bytes(range(128, 256)) * 100, "kb.parquet")
    assert str(binary.value) == (
        "kb.parquet: not a calibration file (UnicodeDecodeError: 'utf-8' codec can't decode byte 0x80 in "
        "position 4: invalid start byte)"
    )
    with pytest.raises(CalibrationError, match="a calibration file is needed for int8 and uint8 only"):
        Quantizer("int8")


def test_a_calibration_cut_as_the_jobs_passages_ranges_over_the_jobs_passage_vectors(tmp_path, model_path, capsys):
    """Without --chunk_tokens and --max_seq_length the command embedded each long document whole, truncated to
    its start, while the job it was made for stores one vector per passage: ranges of other vectors. The file
    records how its texts were cut, and a run cutting them otherwise says so."""
    documents = [" ".join(make_rows(30, seed=seed).column("text").to_pylist()) for seed in range(3)]
    shard = write_parquet(tmp_path / "kb.parquet", id=["a", "b", "c"], text=documents)
    settings = ["--model", model_path, "--chunk_tokens", "128", "--chunk_overlap", "16", "--max_seq_length", "200"]
    path = tmp_path / "calibration.json"
    assert calibrate(["--output", str(path), "--input", str(shard), *settings]) == 0
    calibration = Calibration.from_json(path.read_text(), str(path))
    out = tmp_path / "out"
    job = run_cli("--input", str(shard), "--output", str(out), *settings)
    assert job.returncode == 0, job.stderr
    vectors = np.array([row["embedding"] for row in embedding_rows(out).values()], np.float32)
    assert calibration.texts == len(vectors) > 3 * 5
    np.testing.assert_allclose(calibration.minimum, vectors.min(axis=0), atol=2e-6)
    np.testing.assert_allclose(calibration.maximum, vectors.max(axis=0), atol=2e-6)
    assert calibration.made_for.texts_cut == "passages of up to 128 tokens, 16 overlapping"
    whole = tmp_path / "whole.json"
    assert calibrate(["--output", str(whole), "--input", str(shard), "--model", model_path]) == 0
    assert Calibration.from_json(whole.read_text(), "").made_for.texts_cut == "whole texts, truncated to 256 tokens"
    matching, other = run_clis(
        ["--input", str(shard), "--output", str(tmp_path / "int8"), *settings, "--vector_dtype", "int8",
         "--calibration", str(path)],
        ["--input", str(shard), "--output", str(tmp_path / "int8-whole"), *settings, "--vector_dtype", "int8",
         "--calibration", str(whole)],
    )  # fmt: skip
    assert matching.returncode == 0 and other.returncode == 0, other.stderr
    warning = (
        f"WARNING pipeline.plan: --calibration {whole} was measured on whole texts, truncated to 256 tokens, and "
        "this run embeds passages of up to 128 tokens, 16 overlapping: values past its ranges are clipped and "
        "counted; make one with this run's --max_seq_length and --chunk_tokens (python -m pipeline.calibrate)"
    )
    assert warning in other.stderr and "was measured on" not in matching.stderr
    capsys.readouterr()
    too_long = ["--output", str(path), "--input", str(shard), "--model", model_path, "--chunk_tokens", "300"]
    assert calibrate(too_long) == 2
    assert capsys.readouterr().err == "error: --chunk_tokens 300 is more than the model's limit of 256 tokens\n"


def test_calibration_takes_texts_from_shards_of_any_text_type(tmp_path):
    write_parquet(tmp_path / "a.parquet", text=["one", "  ", "two"])
    write_parquet(tmp_path / "b.parquet", text=pa.array(["three", None], pa.large_string()))  # pandas 3
    write_parquet(tmp_path / "c.parquet", text=pa.array(["four"]).dictionary_encode())
    write_parquet(tmp_path / "d.parquet", text=pa.array(["five"], pa.string_view()))
    texts = calibration_texts([f"{tmp_path}/*.parquet"], "text", rows=10)
    assert texts.to_pylist() == ["one", "two", "three", "four", "five"]


def test_calibration_leaves_out_the_texts_the_job_rejects_as_holding_no_token(tmp_path, model_path, capsys):
    """Zero-width spaces and control characters are no text to MiniLM: the job rejects them (no_tokens),
    and the calibration measured its ranges on their vector too, the empty text's."""
    kept = ["Backups run nightly.", "The index is rebuilt at noon."]
    write_parquet(tmp_path / "kb.parquet", text=[kept[0], "\u200b\u200b\u200b", "\x01\x02", kept[1]])
    output = tmp_path / "c.json"
    command = ["--output", str(output), "--model", model_path, "--input", str(tmp_path / "kb.parquet")]
    assert calibrate([*command, "--rows", "2"]) == 0  # the first 2 texts that the job embeds
    assert capsys.readouterr().out.strip() == f"{output}: ranges of 384 dimensions over 2 texts"
    calibration = Calibration.from_json(output.read_text(), str(output))
    vectors = PooledEncoder(read_model_folder(model_path), "cpu").encode(kept).embeddings
    assert np.array_equal(np.array(calibration.minimum, np.float32), vectors.min(axis=0))
    assert np.array_equal(np.array(calibration.maximum, np.float32), vectors.max(axis=0))


def test_ranges_of_no_width_in_any_dimension_are_refused(tmp_path, model_path, capsys):
    """Fifty copies of one text calibrated to a single vector's ranges: every vector was then stored alike.
    One dimension of no width stays allowed (a ReLU that never fires)."""
    write_parquet(tmp_path / "same.parquet", text=["See attached document."] * 50)
    output = tmp_path / "c.json"
    command = ["--output", str(output), "--model", model_path, "--input", str(tmp_path / "same.parquet")]
    assert calibrate(command) == 1
    assert "1 different text(s) holding a token in column 'text' of --input" in capsys.readouterr().err
    assert not output.exists()
    with pytest.raises(CalibrationError, match="^one.json: the ranges have no width in any dimension"):
        Calibration.from_json(Calibration((0.5, -0.5), (0.5, -0.5), 50).to_json(), "one.json")
    assert Calibration.from_json(Calibration((0.0, -0.5), (0.0, 0.5), 50).to_json(), "x").minimum == (0.0, -0.5)
