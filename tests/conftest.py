"""Shared fixtures: the real default model, tiny random models in the sentence-transformers layout,
and helpers that write real Parquet files and run the job through its command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertModel  # noqa: E402

from tests.forked_commands import Commands  # noqa: E402
from transforms.model_store import default_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY_POOLINGS = {
    "cls": {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
    "max": {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False},
    "mean": {"pooling_mode_mean_tokens": True},
    "mean_sqrt_len": {"pooling_mode_mean_sqrt_len_tokens": True, "pooling_mode_mean_tokens": False},
    "cls+mean": {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
}


@pytest.fixture(scope="session")
def model_path() -> str:
    return default_model_path()


def save_tiny_model(
    folder: Path,
    pooling: dict,
    normalize: bool = True,
    max_seq_length: int = 64,
    prompts: dict | None = None,
    seed: int = 0,
    hidden_act: str = "gelu",
) -> Path:
    """A randomly initialised 2-layer BERT saved in the sentence-transformers layout."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_act=hidden_act,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling_config = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, **pooling}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    if normalize:
        (folder / "2_Normalize").mkdir()
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    if prompts:
        (folder / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {name: save_tiny_model(root / name, pooling) for name, pooling in TINY_POOLINGS.items()}


def write_parquet(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


JOB = [sys.executable, "-m", "pipeline.run"]  # the job's command, for tests that start it themselves
COMMANDS = Commands()


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The job as users start it, `python -m pipeline.run ...`, in a process of its own (forked from one that
    has imported the job's modules: tests/forked_commands.py)."""
    return COMMANDS.start("pipeline.run", args).wait(timeout)


def run_loader(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m pipeline.load ...`, as run_cli starts the job."""
    return COMMANDS.start("pipeline.load", args).wait(timeout)


def run_clis(*commands: list[str], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Independent runs of the job at once, their results in order."""
    started = [COMMANDS.start("pipeline.run", tuple(args)) for args in commands]
    try:
        return [command.wait(timeout) for command in started]
    finally:  # one timed out or the test was stopped: the others end too
        for command in started:
            command.kill()


def read_manifest(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


def embedding_rows(output: Path) -> dict:
    """The embeddings files' rows by id, or by (id, chunk) for passages; a key written twice fails the test."""
    rows = pq.read_table(sorted(output.glob("embeddings-*.parquet"))).to_pylist()
    by_key = {(row.pop("id"), row.pop("chunk")) if "chunk" in row else row.pop("id"): row for row in rows}
    assert len(by_key) == len(rows)
    return by_key


COUNTS = ("rows_in", "rows_out", "rows_embedded", "rows_reused", "rows_rejected", "rows_truncated", "tokens")


def assert_same_output(output: Path, expected: Path) -> None:
    """Same counts and rows; vectors equal up to float32 rounding, which depends on how rows
    were batched (runner, bundles, which worker got which rows)."""
    assert {k: read_manifest(output)[k] for k in COUNTS} == {k: read_manifest(expected)[k] for k in COUNTS}
    rows, reference = embedding_rows(output), embedding_rows(expected)
    assert rows.keys() == reference.keys()
    for key, row in rows.items():
        np.testing.assert_allclose(row.pop("embedding"), reference[key].pop("embedding"), rtol=0, atol=1e-6)
        assert row == reference[key]  # carried columns, content_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    """Until a server started by a test listens on loopback; fails if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {seconds}s")


@pytest.fixture
def local_zone():
    """Sets this process's local time zone (TZ, then time.tzset) for a test; both are restored after."""
    saved = os.environ.get("TZ")

    def set_zone(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    try:
        yield set_zone
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


# The reliability catalogue (issue: nothing lost, no one let in): every case tried, printed as a
# table when the suite ends. rows_lost counts input rows found in neither the embeddings nor the
# rejects files of a published run; a run that fails publishes nothing, and says why.
CATALOGUE: list[tuple[str, str, str, int | None, int | None]] = []


def count_rows(paths) -> int:
    return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)


def count_documents(paths) -> int:
    """Rows of an embeddings file set; with passages, the documents (distinct ids) they come from."""
    if paths and "chunk" in pq.read_schema(paths[0]).names:
        return len(set(pq.read_table(paths, columns=["id"])["id"].to_pylist()))
    return count_rows(paths)


def record(kind: str, case: str, outcome: str, inputs=(), output: Path | None = None) -> int | None:
    """Add a case to the catalogue; for a published run, return the input rows it lost."""
    lost = rows_in = None
    if output is not None and (output / "manifest.json").exists():
        rows_in = count_rows(inputs)
        lost = (
            rows_in
            - count_documents(sorted(output.glob("embeddings-*.parquet")))
            - count_rows(sorted(output.glob("rejected-*.parquet")))
        )
    CATALOGUE.append((kind, case, outcome, rows_in, lost))
    return lost


# The suite runs in several processes (pytest-xdist; `make test`): each test's cases travel to the
# process that prints the table in its reports' user_properties, which is how xdist passes them on.
_CASE = "catalogue case"
_ATTACHED = 0  # CATALOGUE's cases already attached to a test
_REPORTED: list[tuple | list] = []  # every test's cases where the table is printed (lists, through xdist)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    global _ATTACHED
    item.user_properties.extend((_CASE, case) for case in CATALOGUE[_ATTACHED:])
    _ATTACHED = len(CATALOGUE)
    return (yield)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # its report holds the cases of the test's every phase
        _REPORTED.extend(case for name, case in report.user_properties if name == _CASE)


def pytest_terminal_summary(terminalreporter) -> None:
    if not _REPORTED:
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability catalogue")
    write(f"{'kind':<9} {'case':<44} {'outcome':<50} {'rows in':>7} {'lost':>5}")
    # By kind, then case: the same table whichever process ran which test first.
    for kind, case, outcome, rows_in, lost in sorted(_REPORTED, key=lambda row: (row[0], row[1])):
        write(
            f"{kind:<9} {case:<44} {outcome:<50} {rows_in if rows_in is not None else '-':>7} "
            f"{lost if lost is not None else '-':>5}"
        )
    published = [lost for *_, lost in _REPORTED if lost is not None]
    write(f"{len(_REPORTED)} cases, {len(published)} published runs, rows lost in all: {sum(published)}")
