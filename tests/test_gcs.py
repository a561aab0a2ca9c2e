"""gs:// inputs, outputs, previous runs and models through Beam's GCS filesystem, against a real
Cloud Storage API emulator (PyPI gcp-storage-emulator) started on loopback.

STORAGE_EMULATOR_HOST points google-cloud-storage, and with it Beam's gcsio, at the emulator.
The jobs run in this process with in-memory workers: Beam looks for Google credentials once per
process, retrying for about 30 s before it connects anonymously, which the emulator accepts.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.cloud import storage

from encoder import ModelFolderError, read_model_folder
from pipeline.run import main
from samples.knowledge_base import write_shards
from tests.conftest import free_port, wait_for_port
from transforms.model_store import CACHE_ENV, fetch_model, model_folder

IN_PROCESS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
MODEL = "gs://kb/models/minilm"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("gcs")
    port = free_port()
    emulator = subprocess.Popen(
        [Path(sys.executable).parent / "gcp-storage-emulator", "start", "--host=127.0.0.1", f"--port={port}"]
        + ["--in-memory", "--quiet"]
    )
    env = {
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
        "NO_GCE_CHECK": "true",  # no probe of a metadata server off this machine
        CACHE_ENV: str(root / "model-cache"),
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        wait_for_port(port, emulator)
        bucket = storage.Client(project="test").create_bucket("kb")
        write_shards(root / "kb", rows=80, shards=2)
        for local, prefix in ((root / "kb", "kb"), (Path(model_path), "models/minilm")):
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                bucket.blob(f"{prefix}/{path.relative_to(local).as_posix()}").upload_from_filename(str(path))
        yield bucket, root
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        emulator.terminate()
        emulator.wait(timeout=30)


def _json(bucket, name: str) -> dict:
    return json.loads(bucket.blob(name).download_as_bytes())


def _vectors(table: pa.Table) -> dict:
    return {row["id"]: np.asarray(row["embedding"], dtype=np.float32) for row in table.to_pylist()}


@pytest.fixture(scope="module")
def day1(bucket):
    bucket, root = bucket
    args = ["--input", "gs://kb/kb/*.parquet", "--model", MODEL, "--carry_columns", "title", *IN_PROCESS]
    assert main([*args, "--output", "gs://kb/out/day1"]) == 0
    assert main([*args, "--output", "gs://kb/out/day2", "--previous", "gs://kb/out/day1"]) == 0
    return bucket, root


def test_job_reads_writes_and_loads_its_model_through_gcs(day1, model_path):
    bucket, root = day1
    manifest = _json(bucket, "out/day1/manifest.json")
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (80, 80, 0)
    assert manifest["model"]["name"] == MODEL
    assert manifest["model"]["weights_sha256"] == read_model_folder(model_path).weights_sha256()
    listed = sorted(blob.name for blob in bucket.list_blobs(prefix="out/day1/"))
    written = sorted(f"out/day1/{name}" for names in manifest["files"].values() for name in names)
    assert listed == sorted([*written, "out/day1/manifest.json"])  # no temporary files left behind
    embedding_files = [name for name in written if "/embeddings-" in name]
    gcs = _vectors(
        pa.concat_tables(pq.read_table(io.BytesIO(bucket.blob(name).download_as_bytes())) for name in embedding_files)
    )
    # The same rows, local files, the packaged model: the same vectors bit for bit.
    local = root / "local"
    args = ["--input", f"{root}/kb/*.parquet", "--output", str(local), "--carry_columns", "title", *IN_PROCESS]
    assert main(args) == 0
    expected = _vectors(pq.read_table(sorted(local.glob("embeddings-*.parquet"))))
    assert gcs.keys() == expected.keys() and len(gcs) == 80
    assert all(np.array_equal(gcs[key], expected[key]) for key in gcs)


def test_nightly_run_with_previous_on_gcs_reuses_every_unchanged_vector(day1):
    bucket, _ = day1
    manifest = _json(bucket, "out/day2/manifest.json")
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_reused"]) == (80, 0, 80)
    assert manifest["previous"] == {"path": "gs://kb/out/day1", "vectors_reused": True}


def test_gcs_model_is_copied_once_per_machine_and_checked_by_its_weights_hash(day1, model_path):
    sha = read_model_folder(model_path).weights_sha256()
    cached = Path(os.environ[CACHE_ENV]) / sha
    assert cached.is_dir()  # the jobs above copied it
    # With the hash, the cached copy is used without reading the bucket again.
    (cached / "marker").write_text("cached")
    assert fetch_model(MODEL, sha) == cached
    assert model_folder(MODEL, sha).path == cached
    with pytest.raises(ModelFolderError, match=f"not the expected {'0' * 64}"):
        model_folder(MODEL, "0" * 64)


def test_missing_gcs_model_is_a_clear_error(day1):
    with pytest.raises(ModelFolderError, match="gs://kb/models/nothing: no files found"):
        model_folder("gs://kb/models/nothing")
