"""gs:// inputs, outputs, previous runs and models through Beam's GCS filesystem, against a real
Cloud Storage API emulator (PyPI gcp-storage-emulator) started on loopback.

STORAGE_EMULATOR_HOST points google-cloud-storage, and with it Beam's gcsio, at the emulator.
The jobs run in this process with in-memory workers: Beam looks for Google credentials once per
process, retrying for about 30 s before it connects anonymously, which the emulator accepts.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.gcsfilesystem import GCSFileSystem
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from google.cloud import storage

from encoder import ModelFolderError, read_model_folder
from encoder.folder_digest import folder_sha256
from pipeline.load import export_pinecone, read_run
from pipeline.pinecone_files import PART_NAME
from pipeline.plan import match_inputs
from pipeline.run import main
from samples.knowledge_base import write_shards
from schemas.inputs import InputError
from tests.conftest import ROOT, free_port, record, wait_for_port
from transforms.compact import CompactFiles
from transforms.model_store import CACHE_ENV, fetch_model, model_folder
from transforms.output_owner import OutputOwner
from transforms.write import parquet_writer, remove_temp_files

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


def test_a_flex_template_launch_writes_the_job_graph_and_exits_0(bucket):
    """Dataflow's flex template launcher runs the job's file with --template_location: Beam writes the
    job's graph there and returns at once, and Dataflow runs it after the launcher exits 0."""
    bucket, _ = bucket
    template = "gs://kb/staging/template_launches/night/job_object"
    launch = [
        "--input=gs://kb/kb/*.parquet", "--output=gs://kb/out/template", "--device=cuda", "--overwrite=true",
        "--runner=DataflowRunner", "--project=my-project", "--region=us-central1", "--job_name=embed-night",
        "--temp_location=gs://kb/temp", "--staging_location=gs://kb/staging", f"--template_location={template}",
        "--sdk_container_image=registry.example/embed/gpu-worker:latest", "--experiments=use_runner_v2",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / "run.py"), *launch],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote the job's graph to {template}; Dataflow runs the job from it" in result.stderr
    graph = _json(bucket, template.removeprefix("gs://kb/"))
    options = graph["environment"]["sdkPipelineOptions"]["options"]
    assert (graph["name"], graph["type"]) == ("embed-night", "JOB_TYPE_BATCH")
    assert (options["input"], options["output"], options["device"]) == (
        "gs://kb/kb/*.parquet",
        "gs://kb/out/template",
        "cuda",
    )
    assert sorted(blob.name for blob in bucket.list_blobs(prefix="out/template/")) == ["out/template/_owner.json"]


def test_nightly_run_with_previous_on_gcs_reuses_every_unchanged_vector(day1):
    bucket, _ = day1
    manifest = _json(bucket, "out/day2/manifest.json")
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_reused"]) == (80, 0, 80)
    day1_run = _json(bucket, "out/day1/manifest.json")["run_id"]
    assert manifest["previous"] == {"path": "gs://kb/out/day1", "run_id": day1_run, "vectors_reused": True}
    # Nothing changed: an empty change set, its files written beside the snapshot in the bucket.
    assert manifest["changes"] == {"previous_run_id": day1_run, "upserts": 0, "deletes": 0, "restated": 0}
    listed = sorted(blob.name for blob in bucket.list_blobs(prefix="out/day2/"))
    written = sorted(f"out/day2/{name}" for names in manifest["files"].values() for name in names)
    assert listed == sorted([*written, "out/day2/manifest.json"])
    assert any(name.startswith("out/day2/changes/upserts-") for name in listed)
    assert any(name.startswith("out/day2/changes/deletes-") for name in listed)


def test_gcs_model_is_copied_once_per_machine_and_keyed_by_its_folder_digest(day1, model_path):
    digest = folder_sha256(model_path)
    cache = Path(os.environ[CACHE_ENV])
    assert sorted(p.name for p in cache.iterdir()) == [digest]  # the two jobs above: one copy
    cached = cache / digest
    assert _json(day1[0], "out/day1/manifest.json")["model"]["folder_sha256"] == digest
    # With the digest, the cached copy is used without reading the bucket again.
    (cached / "not-a-module").mkdir()
    (cached / "not-a-module" / "marker").write_text("cached")
    assert fetch_model(MODEL, digest) == cached
    assert model_folder(MODEL, digest).path == cached
    with pytest.raises(ModelFolderError, match=f"not the expected {'0' * 64}"):
        model_folder(MODEL, "0" * 64)


def test_changed_file_in_a_gcs_model_folder_is_copied_anew_and_reembeds_everything(day1, model_path):
    bucket, _ = day1
    cache, old = Path(os.environ[CACHE_ENV]), folder_sha256(model_path)
    assert sorted(p.name for p in cache.iterdir()) == [old]  # the runs above cached the folder as it was
    blob = bucket.blob("models/minilm/1_Pooling/config.json")
    original = blob.download_as_bytes()
    blob.upload_from_string(
        json.dumps({**json.loads(original), "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True})
    )
    try:
        args = ["--input", "gs://kb/kb/*.parquet", "--model", MODEL, *IN_PROCESS]
        assert main([*args, "--output", "gs://kb/out/day3-cls", "--previous", "gs://kb/out/day2"]) == 0
        new = _json(bucket, "out/day3-cls/manifest.json")["model"]["folder_sha256"]
        assert sorted(p.name for p in cache.iterdir()) == sorted([old, new])
        # A worker on a machine that cached only the old folder copies the changed one anew.
        shutil.rmtree(cache / new)
        assert model_folder(MODEL, new).path == cache / new
        assert folder_sha256(cache / new) == new and (cache / old).is_dir()
    finally:
        blob.upload_from_string(original)
    manifest = _json(bucket, "out/day3-cls/manifest.json")
    assert new != old and manifest["model"]["pooling"] == ["cls"]
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_reused"]) == (80, 80, 0)
    day2_run = _json(bucket, "out/day2/manifest.json")["run_id"]
    assert manifest["previous"] == {"path": "gs://kb/out/day2", "run_id": day2_run, "vectors_reused": False}
    assert manifest["changes"] == {"previous_run_id": day2_run, "upserts": 80, "deletes": 0, "restated": 0}
    # A worker asked for the changed folder after the bucket went back refuses to load what it finds.
    shutil.rmtree(cache / new)
    with pytest.raises(ModelFolderError, match=f"its files have folder sha256 {old}, not the expected {new}"):
        model_folder(MODEL, new)
    record("storage", "model folder changed in the bucket", "copied anew; every row re-embedded")


def test_a_missing_bucket_or_an_object_as_output_is_named_before_any_worker_starts(bucket, capsys):
    """Were Beam's listing errors (the job failed, a traceback), and an object taken for a folder."""
    cases = [
        (["gs://kb/kb/*.parquet", "gs://nobucket/out"], "--output gs://nobucket/out: cannot be listed ("),
        (["gs://nobucket/kb/*.parquet", "gs://kb/out/x"], "--input gs://nobucket/kb/*.parquet: cannot be listed ("),
        (
            ["gs://kb/kb/*.parquet", "gs://kb/kb/part-00000.parquet"],
            "--output gs://kb/kb/part-00000.parquet is a file; give a directory",
        ),
    ]
    for (pattern, output), message in cases:
        assert main(["--input", pattern, "--output", output, "--model", MODEL, "--plan_only"]) == 1
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith(f"error: {message}") and "Traceback" not in err, err


def test_a_spark_dataset_in_a_bucket_is_named_not_left_unread(bucket, monkeypatch):
    """In a bucket a folder is a prefix: `spark/*.parquet` matched `extra.parquet` alone, and the folder
    `spark/docs.parquet` spelled out matched nothing ("no file matches"), as objects neither list. A
    folder placeholder (an object named `.../`, as the Cloud Console's "Create folder" makes) is no file,
    and each prefix is listed once, however many patterns and checks share it."""
    gcs, root = bucket
    shard = next((root / "kb").glob("*.parquet"))
    for name in ("spark/docs.parquet/part-00000-c0.snappy.parquet", "spark/extra.parquet"):
        gcs.blob(name).upload_from_filename(str(shard))
    gcs.blob("spark/docs.parquet/_SUCCESS").upload_from_string(b"")
    gcs.blob("spark/empty.parquet/").upload_from_string(b"")
    gcs.blob("spark/docs.parquet/").upload_from_string(b"")
    refusals = {
        "gs://kb/spark/*.parquet": "--input gs://kb/spark/*.parquet: matches 1 folder(s) named as its files are "
        "(gs://kb/spark/docs.parquet/), as Spark writes a dataset, and a wildcard does not read into a folder; "
        "pass their files too, as in --input 'gs://kb/spark/*.parquet,gs://kb/spark/*.parquet/**'",
        "gs://kb/spark/docs.parquet": "--input gs://kb/spark/docs.parquet: a folder; pass its files, as in "
        "'gs://kb/spark/docs.parquet/*.parquet'",
    }
    for pattern, message in refusals.items():
        with pytest.raises(InputError) as refused:
            match_inputs([pattern])
        assert str(refused.value) == message
    listed = Counter()
    list_objects = GCSFileSystem._list

    def counted(self, dir_or_prefix):
        listed[dir_or_prefix] += 1
        return list_objects(self, dir_or_prefix)

    monkeypatch.setattr(GCSFileSystem, "_list", counted)
    both = match_inputs(["gs://kb/spark/*.parquet", "gs://kb/spark/*.parquet/**"])
    assert [f.path for f in both] == [
        "gs://kb/spark/extra.parquet",
        "gs://kb/spark/docs.parquet/part-00000-c0.snappy.parquet",
    ]
    assert listed == {"gs://kb/spark/": 1}  # three matches: each pattern's, and the folders' check


def test_an_object_whose_name_holds_a_backslash_is_read(bucket):
    """Uploaded from Windows, an object may be named `windows\\a.parquet`: Beam's `*` stops at a backslash,
    and `gs://kb/windows/*.parquet` left its rows out of the run without a word."""
    gcs, root = bucket
    shards = sorted((root / "kb").glob("*.parquet"))[:2]
    names = ["windows/b.parquet", "windows/docs\\a.parquet"]
    for name, shard in zip(names, shards, strict=True):
        gcs.blob(name).upload_from_filename(str(shard))
    args = ["--input", "gs://kb/windows/*.parquet", "--output", "gs://kb/out/windows", "--model", MODEL]
    assert main([*args, *IN_PROCESS]) == 0
    manifest = _json(gcs, "out/windows/manifest.json")
    assert [f["path"] for f in manifest["input_files"]] == [f"gs://kb/{name}" for name in names]
    assert manifest["rows_in"] == manifest["rows_embedded"] == sum(pq.read_metadata(s).num_rows for s in shards)


def test_a_pinecone_export_into_a_folder_made_in_the_cloud_console_passes_over_its_folder_objects(day1):
    """The Console makes a folder as an empty object named `ns/`: not a file Pinecone would import."""
    bucket, _ = day1
    for placeholder in ("pinecone/ns/", "pinecone/ns/old/"):
        bucket.blob(placeholder).upload_from_string(b"")
    message = export_pinecone(read_run("gs://kb/out/day1"), "gs://kb/pinecone/ns")
    assert message.startswith("gs://kb/pinecone/ns: 80 vectors of run ")
    listed = sorted(blob.name for blob in bucket.list_blobs(prefix="pinecone/"))
    assert listed[:2] == ["pinecone/ns/", "pinecone/ns/old/"]
    assert len(listed) == 3 and PART_NAME.fullmatch(listed[2].removeprefix("pinecone/ns/"))


def test_a_gcs_model_folder_holding_folder_placeholders_is_copied_without_them(day1, model_path):
    """The Cloud Console's "Create folder" makes objects named `.../`: copied as files, they failed the run."""
    bucket, _ = day1
    for blob in bucket.list_blobs(prefix="models/minilm/"):
        bucket.copy_blob(blob, bucket, blob.name.replace("models/minilm/", "models/console/", 1))
    for placeholder in ("models/console/", "models/console/1_Pooling/"):
        bucket.blob(placeholder).upload_from_string(b"")
    assert model_folder("gs://kb/models/console").path.name == folder_sha256(model_path)


def test_missing_gcs_model_is_a_clear_error(day1):
    with pytest.raises(ModelFolderError, match="gs://kb/models/nothing: no files found"):
        model_folder("gs://kb/models/nothing")


def _flaky_proxy(target: int, every: int) -> tuple[ThreadingHTTPServer, list]:
    """Forwards to the emulator on loopback, answering every `every`-th request 503 or 429 instead,
    uploads and other requests counted apart so that writes are hit whatever else the job asks."""
    faults: list[tuple[int, str, str]] = []
    seen = Counter()
    lock = threading.Lock()

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                kind = self.path.startswith("/upload/")
                seen[kind] += 1
                fail = 503 if seen[kind] % (2 * every) == 0 else 429 if seen[kind] % every == 0 else None
                if fail:
                    faults.append((fail, self.command, self.path.split("?")[0]))
            if fail:
                self.send_response(fail)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            upstream = http.client.HTTPConnection("127.0.0.1", target, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            upstream.request(self.command, self.path, body, headers)
            response = upstream.getresponse()
            data = response.read()
            upstream.close()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    continue
                if key.lower() == "location":  # resumable upload sessions: keep them behind the proxy
                    value = value.replace(f":{target}", f":{self.server.server_address[1]}")
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, faults


def test_transient_503_and_429_from_storage_are_retried_without_duplicate_rows(day1, monkeypatch):
    bucket, _ = day1  # its client talks to the emulator directly
    emulator = int(os.environ["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
    proxy, faults = _flaky_proxy(emulator, every=4)
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.server_address[1]}")
        args = ["--input", "gs://kb/kb/*.parquet", "--output", "gs://kb/out/flaky", "--model", MODEL]
        assert main([*args, "--carry_columns", "title", *IN_PROCESS]) == 0
    finally:
        proxy.shutdown()
    assert {status for status, *_ in faults} == {503, 429}
    assert any(path.startswith("/upload/") for *_, path in faults)  # writes were hit too, not only reads
    manifest = _json(bucket, "out/flaky/manifest.json")
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (80, 80, 0)
    names = [f"out/flaky/{name}" for name in manifest["files"]["embeddings"]]
    table = pa.concat_tables(pq.read_table(io.BytesIO(bucket.blob(name).download_as_bytes())) for name in names)
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 80  # nothing written twice by a retried request
    day1_names = [f"out/day1/{name}" for name in _json(bucket, "out/day1/manifest.json")["files"]["embeddings"]]
    day1_vectors = _vectors(
        pa.concat_tables(pq.read_table(io.BytesIO(bucket.blob(name).download_as_bytes())) for name in day1_names)
    )
    assert all(np.array_equal(vector, day1_vectors[key]) for key, vector in _vectors(table).items())
    record("fault", f"{len(faults)} storage requests answered 503/429", "retried; no duplicate, none lost")


def test_small_files_in_a_bucket_are_merged_and_their_sources_deleted(bucket):
    bucket, root = bucket
    local = write_shards(root / "small", rows=30, shards=3)
    for path in local:
        bucket.blob(f"small/{path.name}").upload_from_filename(str(path))
    paths = [f"gs://kb/small/{path.name}" for path in local]
    schema = pq.read_schema(local[0])
    owner = OutputOwner("gs://kb/small", "run-a")
    owner.take("2026-12-03T10:00:00+00:00")
    assert bucket.blob("small/_owner.json").exists()
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        _ = (
            pipeline
            | beam.Create(paths)
            | CompactFiles("gs://kb/small/part", partial(parquet_writer, schema=schema, dictionary=[]), 2**20, owner)
        )
    owner.release()
    assert [blob.name for blob in bucket.list_blobs(prefix="small/")] == ["small/part-merged-00000-of-00001.parquet"]
    merged = pq.read_table(io.BytesIO(bucket.blob("small/part-merged-00000-of-00001.parquet").download_as_bytes()))
    assert merged.equals(pq.read_table(local, schema=schema))


def test_a_launcher_in_summer_time_records_and_checks_the_objects_times_in_utc(bucket, local_zone):
    """Beam reads gs:// times through the local zone: a launcher in summer time read them a shift
    early, into its manifest, and an hour off workers in UTC. Run in a zone that is in summer time
    when the shards were written (Berlin's or Sydney's), the job records each shard's `updated`,
    and a worker in UTC finds each shard as the launcher planned it."""
    bucket, _ = bucket
    pattern = "gs://kb/kb/*.parquet"
    updated = {f"gs://kb/{b.name}": b.updated for b in bucket.list_blobs(prefix="kb/") if b.name.endswith(".parquet")}
    day = 86400
    for zone in ("Europe/Berlin", "Australia/Sydney"):
        local_zone(zone)  # in summer time for a day either side of every shard's time, away from a change
        if all(time.localtime(t.timestamp() + k).tm_isdst for t in updated.values() for k in (-day, 0, day)):
            break
    else:
        pytest.fail(f"neither zone is in summer time at {sorted(updated.values())}")
    beam = {m.path: m.last_updated_in_seconds for m in FileSystems.match([pattern])[0].metadata_list}
    assert all(beam[path] - t.timestamp() == -3600 for path, t in updated.items())  # Beam's error here
    args = ["--input", pattern, "--output", "gs://kb/out/summer-time", *IN_PROCESS]
    assert main(args) == 0
    manifest = _json(bucket, "out/summer-time/manifest.json")
    assert {f["path"]: f["modified"] for f in manifest["input_files"]} == {p: t.isoformat() for p, t in updated.items()}
    planned = match_inputs([pattern])
    local_zone("UTC")  # a Dataflow worker
    listed = [file.now() for file in planned]
    assert all(file.listed_as_planned(now) for file, now in zip(planned, listed, strict=True))
    assert [now.times() for now in listed] == [(file.modified,) for file in planned]


def test_a_failed_runs_temporary_objects_are_removed(bucket):
    """Beam's temporary folders were deleted by their names, which on object storage name no object: a
    stopped or killed run's temporary Parquet files stayed in the output, beside the next run's."""
    bucket, _ = bucket
    left = [
        "failed/beam-temp-embeddings-3f2a/9c1e.embeddings.parquet",
        "failed/beam-temp-embeddings-reused-77b0/a1.embeddings-reused.parquet",
        "failed/changes/beam-temp-changes-deletes-0d4e/b2.deletes.parquet",
        "failed/manifest.json.5e6f.tmp",
    ]
    for name in [*left, "failed/_owner.json", "failed/embeddings-00000-of-00001.parquet"]:
        bucket.blob(name).upload_from_string(b"x")
    remove_temp_files("gs://kb/failed")
    assert sorted(blob.name for blob in bucket.list_blobs(prefix="failed/")) == [
        "failed/_owner.json",
        "failed/embeddings-00000-of-00001.parquet",
    ]
