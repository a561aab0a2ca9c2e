"""How vectors are stored and read back: calibrations that cannot be read back within the README's
error are refused or read back exactly, float16 never stores an infinity, empty batches export to
Pinecone."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from safetensors.torch import load_file, save_file

from encoder.quantize import Calibration, CalibrationError, Float16Overflow, Quantizer
from pipeline.calibrate import calibration_texts
from pipeline.calibrate import main as calibrate
from pipeline.pinecone_files import IMPORT_SCHEMA, import_table
from tests.conftest import TINY_POOLINGS, run_cli, save_tiny_model, write_parquet


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_a_dimension_of_one_calibrated_value_reads_back_as_that_value(dtype):
    # One calibration text (or a dimension that never varies): min == max. Quantizing takes a step
    # of 1 there, as sentence-transformers does; reading back must not add half of it.
    calibration = Calibration((0.25, -0.5), (0.25, 0.5), 1)
    quantizer = Quantizer(dtype, calibration)
    vectors = np.array([[0.25, 0.1], [0.25, -0.5]], np.float32)
    restored = quantizer.dequantize(quantizer.quantize(vectors), 2)
    step = 1.0 / 255
    assert restored[:, 0].tolist() == [0.25, 0.25]
    assert (np.abs(restored[:, 1] - vectors[:, 1]) <= step / 2 + 1e-6).all()


@pytest.mark.parametrize(
    "body",
    [
        {"texts": 3, "min": [0.0, float("nan")], "max": [1.0, 1.0]},
        {"texts": 3, "min": [0.0, 0.0], "max": [1.0, float("inf")]},
        {"texts": 3, "min": [0.0, 0.5], "max": [1.0, 0.25]},
        {"texts": 0, "min": [0.0], "max": [1.0]},
    ],
)
def test_a_calibration_file_that_cannot_be_read_back_is_refused(body):
    with pytest.raises(CalibrationError, match="bad.json: min and max must be finite numbers, min <= max"):
        Calibration.from_json(json.dumps(body), "bad.json")


def test_no_calibration_from_no_vectors():
    with pytest.raises(CalibrationError, match="no vectors to calibrate on"):
        Calibration.of(np.zeros((0, 4), np.float32))


def test_calibrate_refuses_too_few_texts_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        calibrate(["--output", str(tmp_path / "c.json"), "--rows", "0"])
    assert exit_.value.code == 2 and "--rows 0: calibrate on at least 2 texts" in capsys.readouterr().err
    write_parquet(tmp_path / "blank.parquet", text=["  ", "", None])
    write_parquet(tmp_path / "none.parquet", text=pa.array([], pa.string()))
    assert calibration_texts([str(tmp_path / "none.parquet")], "text", rows=10).to_pylist() == []
    for name in ("blank", "none"):
        code = calibrate(["--output", str(tmp_path / "c.json"), "--input", str(tmp_path / f"{name}.parquet")])
        assert code == 1 and "0 different text(s) holding a token in column 'text'" in capsys.readouterr().err
    # Texts of no tokens are none: were "CalibrationError: no vectors to calibrate on", a traceback.
    unseen = write_parquet(tmp_path / "unseen.parquet", text=["\u200b", "\u200b\u200b"])
    code = calibrate(["--output", str(tmp_path / "c.json"), "--input", str(unseen), "--chunk_tokens", "64"])
    assert code == 1 and capsys.readouterr().err == (
        f"error: 0 different text(s) holding a token in column 'text' of --input {unseen}; calibration needs at "
        "least 2\n"
    )
    assert not (tmp_path / "c.json").exists()


def test_calibrate_refuses_what_the_job_refuses_in_one_line_with_the_jobs_exit_status(tmp_path, capsys):
    """The wrong text column, no model there, a prompt or dimension the model lacks, an output that
    cannot be written: each an `error:` line, where they were tracebacks."""
    shard = write_parquet(tmp_path / "kb.parquet", text=["one text", "another"])
    (tmp_path / "a-file").write_text("")
    output = ["--output", str(tmp_path / "c.json")]
    cases = [
        (["--input", str(shard), "--text_column", "body"], 1, f"{shard}: no column 'body' (--text_column)"),
        (["--model", str(tmp_path / "none")], 1, f"{tmp_path / 'none'}: not a sentence-transformers model folder"),
        (["--prompt_name", "query"], 2, "--prompt_name: "),
        (["--truncate_dim", "999"], 2, "--truncate_dim 999 must be between 1 and the model's dimension 384"),
        (["--input", str(shard), "--output", str(tmp_path / "a-file" / "c.json")], 1, "--output "),
    ]
    for args, code, message in cases:
        assert calibrate([*output, *args]) == code
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_an_empty_batch_exports_to_pinecone_as_an_empty_table(dtype):
    calibration = Calibration((-1.0,) * 4, (1.0,) * 4, 2) if dtype == "int8" else None
    quantizer = Quantizer(dtype, calibration)
    table = pa.table(
        {
            "id": pa.array([], pa.string()),
            "content_hash": pa.array([], pa.string()),
            "embedding": pa.array([], pa.list_(pa.int8() if dtype == "int8" else pa.float32(), 4)),
        }
    )
    exported = import_table(table, "id", quantizer, 4, passages=False)
    assert exported.num_rows == 0 and exported.schema == IMPORT_SCHEMA


def test_float16_vectors_past_its_range_fail_the_job_naming_their_ids(tmp_path):
    """A model without Normalize may give values past float16's largest (65504): stored, they would be
    infinities, which the job never writes."""
    with pytest.raises(Float16Overflow, match=r"^1 vectors hold values past float16's range \(texts \[0\] first\)"):
        Quantizer("float16").quantize(np.array([[7e4, 1.0], [0.5, 0.5]], np.float32))
    model = save_tiny_model(tmp_path / "model", TINY_POOLINGS["mean"], normalize=False)
    weights = load_file(model / "model.safetensors")
    weights["encoder.layer.1.output.LayerNorm.weight"] *= 1e6  # token vectors of about a million
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    shard = write_parquet(tmp_path / "in.parquet", id=["a", "b"], text=["Reset the VPN token", "Billing API"])
    out = tmp_path / "out"
    args = ["--input", str(shard), "--output", str(out), "--model", str(model)]
    assert run_cli(*args, "--vector_dtype", "float16").stderr.splitlines()[-1] == (
        "error: 2 vectors hold values past float16's range (ids ['a', 'b'] first); pass --vector_dtype float32"
    )
    assert not (out / "manifest.json").exists()
