"""The whole job through its command line on the local runner: counts, ids, schema, norms, manifest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter

from encoder import PooledEncoder, cpu_flags, read_model_folder
from encoder.devices import cuda_available
from pipeline.build import build_pipeline
from pipeline.plan import plan_job
from pipeline.run import _log_device, make_options
from samples.knowledge_base import make_rows, write_shards
from schemas.outputs import read_model_block
from tests.conftest import ROOT, count_rows, read_manifest, run_cli, write_parquet
from transforms import METRICS_NAMESPACE


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("kb")
    write_shards(root / "shards", rows=300, shards=3)
    # A fourth shard, matched through the comma-separated list: the edge cases of a real KB.
    long_text = "overflowing passage " * 300
    write_parquet(
        root / "extra" / "edge.parquet",
        id=["e-1", "e-2", "e-3", "e-4", "e-5", "e-6", "e-7"],
        kind=["doc"] * 7,
        title=["t"] * 7,
        text=[long_text, "東京の天気 ☀️", "שלום, עולם", "NUL\x00inside", None, "   \t\n ", "plain"],
    )
    return root


@pytest.fixture(scope="module")
def job(knowledge_base):
    output = knowledge_base / "out"
    result = run_cli(
        "--input", f"{knowledge_base}/shards/*.parquet,{knowledge_base}/extra/edge.parquet",
        "--output", str(output),
        "--carry_columns", "title,kind",
        "--progress_interval", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return output, result


def read_output(output, name):
    return pq.read_table(sorted(output.glob(f"{name}-*.parquet")))


def test_counts_add_up_and_ids_match_one_to_one(job, knowledge_base):
    output, result = job
    manifest = read_manifest(output)
    assert manifest["rows_in"] == 307
    assert manifest["rows_embedded"] == 305
    assert manifest["rows_rejected"] == 2
    assert manifest["rejected_by_reason"] == {"empty_text": 1, "null_text": 1}
    assert manifest["rows_in"] == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["rows_truncated"] >= 1
    assert "embedded 305 of 307 rows (0 reused, 2 rejected" in result.stdout

    inputs = pq.read_table(
        sorted((knowledge_base / "shards").glob("*.parquet")) + [knowledge_base / "extra/edge.parquet"]
    )
    embedded = read_output(output, "embeddings")
    rejected = read_output(output, "rejected")
    assert sorted(embedded["id"].to_pylist() + rejected["id"].to_pylist()) == sorted(inputs["id"].to_pylist())
    assert len(set(embedded["id"].to_pylist())) == embedded.num_rows
    assert sorted(rejected.to_pylist(), key=lambda r: r["id"]) == [
        {
            "id": "e-5",
            "source_file": str(knowledge_base / "extra/edge.parquet"),
            "row_number": 4,
            "reason": "null_text",
            "column": None,
        },
        {
            "id": "e-6",
            "source_file": str(knowledge_base / "extra/edge.parquet"),
            "row_number": 5,
            "reason": "empty_text",
            "column": None,
        },
    ]
    # Carried columns stay with their row.
    by_id = {r["id"]: r for r in inputs.select(["id", "title", "kind"]).to_pylist()}
    assert all(by_id[r["id"]] == r for r in embedded.select(["id", "title", "kind"]).to_pylist())


def test_schema_metadata_and_norms(job, model_path):
    output, _ = job
    embedded = read_output(output, "embeddings")
    assert embedded.schema.names == ["id", "title", "kind", "content_hash", "embedding"]
    assert embedded.schema.field("id").type == pa.string()
    assert embedded.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    vectors = embedded["embedding"].combine_chunks().values.to_numpy().reshape(-1, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    block = read_model_block(pq.read_schema(sorted(output.glob("embeddings-*.parquet"))[0]))
    folder = read_model_folder(model_path)
    assert block["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert block["weights_sha256"] == folder.weights_sha256()
    settings = ("dim", "pooling", "normalized", "similarity", "max_seq_length")
    assert [block[key] for key in settings] == [384, ["mean"], True, "cosine", 256]
    assert read_manifest(output)["model"] == block


def test_content_hash_is_sha256_of_the_text(job, knowledge_base):
    output, _ = job
    inputs = pq.read_table(
        sorted((knowledge_base / "shards").glob("*.parquet")) + [knowledge_base / "extra/edge.parquet"]
    )
    texts = dict(zip(inputs["id"].to_pylist(), inputs["text"].to_pylist(), strict=True))
    hashes = read_output(output, "embeddings").select(["id", "content_hash"]).to_pylist()
    assert len(hashes) == 305
    assert all(row["content_hash"] == hashlib.sha256(texts[row["id"]].encode()).hexdigest() for row in hashes)


def test_vectors_are_the_encoders(job, model_path):
    output, _ = job
    embedded = read_output(output, "embeddings").filter(
        pa.compute.field("id").isin(["e-1", "e-2", "e-4", "kb-0000007"])
    )
    texts = {"e-1": "overflowing passage " * 300, "e-2": "東京の天気 ☀️", "e-4": "NUL\x00inside"}
    texts["kb-0000007"] = make_rows(100, seed=0).column("text")[7].as_py()
    expected = PooledEncoder(read_model_folder(model_path), device="cpu").encode(
        [texts[i] for i in embedded["id"].to_pylist()]
    )
    got = embedded["embedding"].combine_chunks().values.to_numpy().reshape(-1, 384)
    assert ((got * expected.embeddings).sum(axis=1) >= 0.9999).all()


def test_multi_process_run_gives_the_same_rows(job, knowledge_base):
    output = knowledge_base / "out-multi"
    result = run_cli(
        "--input", f"{knowledge_base}/shards/*.parquet",
        "--output", str(output),
        "--direct_running_mode=multi_processing", "--direct_num_workers=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (300, 300, 0)
    single = read_output(job[0], "embeddings").to_pylist()
    multi = {r["id"]: r["embedding"] for r in read_output(output, "embeddings").to_pylist()}
    assert len(multi) == 300
    for row in single:
        if row["id"] in multi:
            assert np.dot(row["embedding"], multi[row["id"]]) >= 0.9999


def test_a_small_input_runs_in_the_launchers_process_and_a_larger_one_in_a_process_per_core(tmp_path):
    """Worker processes are ready seconds after the launcher's own worker would be: they pay only above
    128 KiB of text, uncompressed (a few files that compress well can hold much). A choice the user
    made stands."""
    write_shards(tmp_path / "small", rows=3, shards=1)
    write_shards(tmp_path / "large", rows=1200, shards=2)
    write_parquet(tmp_path / "compressed" / "kb.parquet", id=["a", "b"], text=["a passage " * 20_000] * 2)
    assert (tmp_path / "compressed" / "kb.parquet").stat().st_size < 2**14  # 400,000 bytes of text
    metadata = pq.ParquetFile(tmp_path / "small" / "part-00000.parquet").metadata
    text = [metadata.schema.column(i).name for i in range(metadata.num_columns)].index("text")
    small = metadata.row_group(0).column(text).total_uncompressed_size

    def workers(name: str, *extra: str) -> list[str]:
        result = run_cli(
            "--input", f"{tmp_path}/{name}/*.parquet", "--output", str(tmp_path / "out"),
            "--device", "cpu", "--plan_only", *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()
        return [line.split("pipeline.run: ")[1] for line in lines if "pipeline.run: workers" in line]

    cores = min(os.cpu_count() or 1, 8)
    if cores == 1:
        assert workers("small") == workers("large") == ["workers: one, in this process"]
        return
    assert workers("small") == [
        f"workers: one, in this process ({small / 2**10:.1f} KiB of text; worker processes above 128.0 KiB)"
    ]
    assert workers("large") == workers("compressed") == [f"workers: {cores} processes, one per core"]
    assert workers("small", "--direct_running_mode=multi_processing", "--direct_num_workers=2") == []


def test_help_explains_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--input",
        "--output",
        "--text_column",
        "--id_column",
        "--carry_columns",
        "--model",
        "--device",
        "--dtype",
        "--max_seq_length",
        "--prompt_name",
        "--token_budget",
        "--rows_per_batch",
        "--overwrite",
    ):
        assert option in result.stdout
    text = " ".join(result.stdout.split())  # as argparse wraps it
    assert "defaults to DirectRunner" not in text  # Beam's own help; the job runs FnApiRunner
    assert "--runner RUNNER Pipeline runner: FnApiRunner (Beam's local runner, the default; DirectRunner" in text


def test_mistyped_option_is_an_error_not_a_silent_default(tmp_path):
    result = run_cli("--input", "x.parquet", "--output", str(tmp_path), "--text_colum", "body")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        "error: unrecognised arguments: --text_colum body (did you mean --text_column?)"
    )
    result = run_cli("--input", "x.parquet", "--output", str(tmp_path), "--foo", "1", "--bar=2", "--baz")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith("error: unrecognised arguments: --foo 1, --bar=2, --baz")


def test_missing_output_is_an_error():
    result = run_cli("--input", "x.parquet")
    assert result.returncode == 2
    assert "--output is required" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--text_column", "id"), "error: --text_column and --id_column are both 'id'"),
        (("--rows_per_batch", "0"), "argument --rows_per_batch: expected a whole number above 0, got '0'"),
        (("--token_budget", "-1"), "argument --token_budget: expected a whole number above 0, got '-1'"),
        (("--max_seq_length", "600"), "error: --max_seq_length must be between 1 and 512 for "),
        (("--max_seq_length", "2"), "error: --max_seq_length 2 leaves no token for text: special tokens and prompt"),
        (
            ("--prompt", "query: ", "--max_seq_length", "4"),
            "error: --max_seq_length 4 leaves no token for text: special tokens and prompt take 4; the least is 5",
        ),
        (("--prompt_name", "nope"), "no prompt named 'nope'; prompts defined: none"),
        (("--device", "gpu"), "error: --device 'gpu' is not one of auto, cpu, cuda, cuda:N"),
        (("--device", "cpu", "--dtype", "float16"), "error: --dtype float16 runs on CUDA only"),
        *(
            pytest.param(
                ("--device", device),
                f"error: --device {device}: this machine has no working CUDA device",
                marks=pytest.mark.skipif(cuda_available(), reason="this machine has a GPU"),
            )
            for device in ("cuda", "cuda:1")
        ),
        (("--target_file_mb", "inf"), "error: --target_file_mb inf must be a finite number above 0"),
        (("--progress_interval", "nan"), "--progress_interval: expected a finite number of seconds, 0 or more"),
        (("--worker_start_timeout", "0"), "--worker_start_timeout: expected a finite number of seconds above 0"),
        (("--runner", "Nope"), "error: --runner Nope: Unexpected pipeline runner: Nope. Valid values are "),
    ],
)
def test_options_the_job_cannot_honour_exit_2_before_workers_start(tmp_path, options, message):
    shard = write_parquet(tmp_path / "in.parquet", id=["a"], text=["some text"])
    result = run_cli("--input", str(shard), "--output", str(tmp_path / "out"), *options)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Worker" not in result.stderr and not (tmp_path / "out").exists()


def _previous_without_files(folder):
    folder.mkdir()
    manifest = {"model": {}, "files": {"embeddings": ["embeddings-a.parquet", "embeddings-b.parquet"]}}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "columns": {"id": "id", "carried": []}}))
    (folder / "embeddings-a.parquet").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("float16 ids", "id column 'id' is halffloat; ids must be strings, binaries, numbers (not float16)"),
        ("output is a file", "is a file; give a directory (it is made when it does not exist)"),
        ("previous manifest damaged", "manifest.json: not a readable manifest (Expecting"),
        ("previous manifest of something else", "not a manifest of this job (no model, files, columns.carried)"),
        ("previous files gone", "1 of the 2 embeddings files its manifest lists are gone ("),
    ],
)
def test_inputs_the_job_cannot_use_fail_before_workers_start_naming_them(tmp_path, case, message):
    ids = pa.array([1.0, 2.0], pa.float16()) if case == "float16 ids" else pa.array(["a", "b"])
    shard = write_parquet(tmp_path / "in.parquet", id=ids, text=["one", "two"])
    output, options = tmp_path / "out", []
    if case == "output is a file":
        output.write_text("not a directory")
    elif case == "previous files gone":
        options = ["--previous", str(_previous_without_files(tmp_path / "previous"))]
    elif case.startswith("previous"):
        (tmp_path / "previous").mkdir()
        (tmp_path / "previous" / "manifest.json").write_text("{" if case.endswith("damaged") else '{"columns": {}}')
        options = ["--previous", str(tmp_path / "previous")]
    result = run_cli("--input", str(shard), "--output", str(output), *options)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "Worker" not in result.stderr


def test_one_file_matched_under_two_spellings_is_planned_once(tmp_path):
    shard = write_parquet(tmp_path / "in.parquet", id=["a", "b"], text=["one", "two"])
    inputs = f"{shard},{tmp_path}/./in.parquet,{tmp_path}/*.parquet"
    result = run_cli("--input", inputs, "--output", str(tmp_path / "out"), "--plan_only")
    assert result.returncode == 0, result.stderr
    assert [f["path"] for f in json.loads(result.stdout)["input_files"]] == [str(shard)]


def test_progress_is_one_readable_line_for_the_whole_job(job, knowledge_base):
    output, result = job
    inputs = sorted((knowledge_base / "shards").glob("*.parquet")) + [knowledge_base / "extra" / "edge.parquet"]
    total = count_rows(inputs)
    line = re.compile(
        r"[\d-]+ [\d:,]+ INFO progress: embedded ([\d,]+) of ([\d,]+) rows \(\d+%\), [\d.,]+ rows/s"
        r"(?:, about (?:\d+h )?(?:\d+m )?\d+[sm] left)?(?:, ([\d,]+) rows rejected)?"
    )
    reports = [line.fullmatch(text) for text in result.stderr.splitlines() if " INFO progress: " in text]
    assert reports and all(reports)
    done, of, rejected = ([int((r.group(n) or "0").replace(",", "")) for r in reports] for n in (1, 2, 3))
    assert {t + r for t, r in zip(of, rejected, strict=True)} == {total}  # the footers' total, less the rows rejected
    assert done[0] == 0  # the first rows reached a loaded model: start-up is over
    assert done == sorted(done) and rejected == sorted(rejected)  # the workers' counts, summed
    manifest = read_manifest(output)
    assert rejected[-1] == manifest["rows_rejected"] > 0 and done[-1] == of[-1] == manifest["rows_embedded"]
    assert "timestamp {" not in result.stderr and "semi_persistent_directory" not in result.stderr
    assert re.search(r"INFO worker: loaded \S+ on cpu in [\d.]+s", result.stderr)
    assert " encoder.pooled_encoder: " not in result.stderr  # its lines too are the worker's (CPU linear kernels)
    startup = r"INFO pipeline.run: start-up: ([\d.]+)s from the command to the first rows reaching a loaded model"
    took = re.search(r" in ([\d.]+)s into ", result.stdout)  # the summary: the command's time, start-up included
    assert float(took.group(1)) > float(re.search(startup, result.stderr).group(1))
    assert "INFO pipeline.run: device: cpu (no CUDA device available)" in result.stderr  # --device auto says


def test_the_jobs_own_lines_survive_beam_logging_as_it_is_imported(tmp_path):
    """Beam without its gcp extra warns through the root logger as it is imported (apitools missing),
    which gave that logger Python's default handler, and the job's INFO lines were lost."""
    blocker = tmp_path / "no-gcp" / "apitools"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('apitools is not installed')\n")
    shard = write_parquet(tmp_path / "in.parquet", id=["a", "b"], text=["one", "two"])
    command = [sys.executable, "-m", "pipeline.run", "--input", str(shard), "--output", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{ROOT}"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING:root:apitools not found" in result.stderr  # what Beam says, in Python's default format
    startup = r"\n\d{4}-\d\d-\d\d [\d:,]+ INFO pipeline.run: start-up: [\d.]+s from the command"
    assert re.search(startup, result.stderr), result.stderr[-3000:]


@pytest.mark.parametrize(
    ("flags", "dtype", "static", "hinted"),
    [
        ("avx2 avx512f avx512bw avx512vl amx_bf16 amx_tile", "auto", False, True),
        ("avx2 avx512f avx512bw avx512vl amx_bf16 amx_tile", "float32", False, False),  # asked for: no advice
        ("avx2 avx512f avx512bw avx512vl avx512_bf16", "auto", False, False),  # no AMX
        ("avx2 avx512f avx512bw avx512vl amx_bf16 amx_tile", "auto", True, False),  # float32 whatever --dtype says
    ],
)
def test_a_cpu_with_amx_is_pointed_to_bfloat16(monkeypatch, caplog, tmp_path, flags, dtype, static, hinted):
    monkeypatch.setattr(cpu_flags, "cpu_features", lambda: ("GenuineIntel", set(flags.split())))
    options = make_options(["--input", "x.parquet", "--output", str(tmp_path), "--device", "cpu", "--dtype", dtype])
    with caplog.at_level("INFO", logger="pipeline.run"):
        _log_device(options, static)
    hints = [r.getMessage() for r in caplog.records if "AMX" in r.getMessage()]
    assert hints == (
        [
            "this CPU has AMX bfloat16 units: --dtype bfloat16 runs on them, 2.6-2.9x faster than "
            "float32 end to end on one such host with all-MiniLM-L6-v2, vectors within cosine 0.999 of "
            "float32 (README, Precision)"
        ]
        if hinted
        else []
    )


def test_a_process_of_the_job_skips_the_last_garbage_collection_at_exit():
    """Worker processes and the launcher import `transforms`; by the time exit handlers registered
    before it run (they run last), every object is frozen, out of the final collection's way."""
    probe = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
        "import transforms\n"
        "print('frozen before exit:', gc.get_freeze_count() > 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["frozen before exit: False", "frozen at exit: True"]


def test_the_launcher_plans_and_builds_a_cpu_job_without_torch_or_transformers(tmp_path):
    """Their imports took 1.5 s of every run's start-up in the launcher, which only plans and builds;
    the workers import them to load the model."""
    shard = write_parquet(tmp_path / "in.parquet", id=["a"], text=["one"], title=["t"])
    probe = (
        "import sys\n"
        "import apache_beam as beam\n"
        "from pipeline.build import build_pipeline\n"
        "from pipeline.plan import plan_job\n"
        "from pipeline.run import make_options\n"
        f"options = make_options(['--input', {str(shard)!r}, '--output', {str(tmp_path / 'out')!r}, "
        "'--carry_columns', 'title'])\n"
        "build_pipeline(beam.Pipeline(options=options), plan_job(options))\n"
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]"]


def test_beam_metrics_count_rows_and_tokens(tmp_path):
    shard = write_parquet(tmp_path / "in.parquet", id=[1, 2, 3, 3], text=["one", "", "three four", "again"])
    options = make_options(["--input", str(shard), "--output", str(tmp_path / "out")])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, plan_job(options))
    result = pipeline.run()
    result.wait_until_finish()
    counters = Counter()  # by name, summed over the steps that count it (as Dataflow's page shows)
    for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        counters[c.key.metric.name] += c.committed
    # [CLS] one [SEP] + [CLS] three four [SEP]; the manifest's counts, rejects of every reason included
    assert counters == {
        "rows_in": 4,
        "rows_embedded": 2,
        "rows_reused": 0,
        "rows_deleted": 0,
        "passages_embedded": 2,
        "rows_rejected": 2,
        "rows_truncated": 0,
        "tokens": 7,
    }


def test_output_files_are_cut_at_the_target_size_and_small_ones_merged(tmp_path):
    """A file is closed once it holds --target_file_mb and the next begun; the small files each
    bundle leaves last are then merged: at most one file under about half the target, every row once."""
    rows = make_rows(1300, seed=4)
    shards = [
        write_parquet(
            tmp_path / f"kb-{i}.parquet", id=rows["id"][i::4].to_pylist(), text=rows["text"][i::4].to_pylist()
        )
        for i in range(4)
    ]
    output = tmp_path / "out"
    result = run_cli(
        "--input", ",".join(map(str, shards)), "--output", str(output), "--target_file_mb", "0.4",
        "--rows_per_batch", "100", "--direct_num_workers", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(output)
    names = [name for name in manifest["files"]["embeddings"] if "-reused-" not in name]
    sizes = [manifest["file_checks"][name]["bytes"] for name in names]
    batch_bytes = 100 * 1600  # a batch of 100 rows: vectors and ids, before compression
    assert len(names) >= 3 and all(size <= 0.4 * 2**20 + batch_bytes for size in sizes)
    assert sum(size < 0.18 * 2**20 for size in sizes) <= 1, sizes  # half, less one footer per merged file
    assert sorted(p.name for p in output.glob("embeddings-*.parquet")) == sorted(manifest["files"]["embeddings"])
    table = pq.read_table([output / name for name in names])
    assert sorted(table["id"].to_pylist()) == sorted(rows["id"].to_pylist())
