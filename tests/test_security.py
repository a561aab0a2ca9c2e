"""No one let in: the job runs no code that came with a model or the data, talks to no one, and
prints no secrets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from encoder import ModelFolderError, read_model_folder
from encoder.folder_digest import folder_sha256
from pipeline.options import parse_command_line
from samples.model_families import save_family
from tests.conftest import ROOT, read_manifest, record, run_cli, write_parquet

GOOD = {"id": ["g-1", "g-2"], "text": ["a first good passage", "a second good passage"]}

# Loaded by every Python process of the job (launcher and worker processes alike) through
# PYTHONPATH: an audit hook that refuses and logs any connection or name lookup that is not
# loopback, before it leaves the machine.
_GUARD = textwrap.dedent(
    """
    import os, sys

    LOG = os.environ["NETWORK_GUARD_LOG"]
    LOCAL = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "", None)

    def _host(address):
        return address[0] if isinstance(address, tuple) else address

    def _guard(event, args):
        if event == "socket.connect":
            sock, address = args
            host = None if isinstance(address, (str, bytes)) else _host(address)  # str/bytes: a Unix socket
        elif event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        else:
            return
        if host in LOCAL or str(host).startswith("127."):
            return
        with open(LOG, "a") as f:
            f.write(f"{os.getpid()} {event} {host!r}\\n")
        raise ConnectionRefusedError(f"network guard: {event} to {host!r}")

    sys.addaudithook(_guard)
    """
)


def _inputs(tmp_path) -> list:
    return sorted((tmp_path / "in").glob("*.parquet"))


def _guarded_env(tmp_path) -> dict:
    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(_GUARD)
    log = tmp_path / "network.log"
    log.write_text("")
    return {**os.environ, "PYTHONPATH": f"{tmp_path / 'guard'}{os.pathsep}{ROOT}", "NETWORK_GUARD_LOG": str(log)}


def test_the_job_opens_no_connection_beyond_this_machine(tmp_path):
    env = _guarded_env(tmp_path)
    log = tmp_path / "network.log"
    # The guard itself works: an outside address is refused before any packet is sent.
    probe = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"
    refused = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    assert "ConnectionRefusedError: network guard: socket.getaddrinfo to '192.0.2.1'" in refused.stderr
    assert "socket.getaddrinfo '192.0.2.1'" in log.read_text()
    log.write_text("")

    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            "--input",
            f"{tmp_path}/in/*.parquet",
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr
    assert read_manifest(tmp_path / "out")["rows_embedded"] == 2
    assert log.read_text() == ""  # launcher and both worker processes: no connection attempted off loopback
    record("security", "network use of a whole run", "none beyond loopback", _inputs(tmp_path), tmp_path / "out")


def test_expected_weights_hash_is_enforced(tmp_path, model_path):
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    args = ["--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"), "--plan_only"]
    wrong = run_cli(*args, "--model_sha256", "0" * 64)
    assert wrong.returncode == 1
    sha = read_model_folder(model_path).weights_sha256()
    assert f"error: {model_path}: its weights have sha256 {sha}, not the expected {'0' * 64}" in wrong.stderr
    right = run_cli(*args, "--model_sha256", sha.upper())
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["model"]["weights_sha256"] == sha
    record("security", "--model_sha256 of other weights", "job refuses to start")


def test_expected_folder_digest_is_enforced(tmp_path, model_path, capsys):
    """--model_folder_sha256 pins every file that shapes the vectors, not only the weights."""
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    args = ["--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out")]
    digest = folder_sha256(model_path)
    wrong = run_cli(*args, "--model_folder_sha256", "0" * 64)
    assert wrong.returncode == 1
    expected = f"{'0' * 64} (the digest --model_folder_sha256 pins)"
    assert f"error: {model_path}: its files have folder sha256 {digest}, not the expected {expected}" in wrong.stderr
    assert not (tmp_path / "out").exists()  # refused while planning: no worker started, nothing written
    right = run_cli(*args, "--plan_only", "--model_folder_sha256", digest.upper())
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["model"]["folder_sha256"] == digest
    # It names a folder of the model cache: anything but a digest is a malformed command line.
    with pytest.raises(SystemExit) as malformed:
        parse_command_line([*args, "--model_folder_sha256", "../models"])
    assert malformed.value.code == 2
    assert "expected a sha256 of 64 hexadecimal digits, got '../models'" in capsys.readouterr().err
    record("security", "--model_folder_sha256 of another folder", "job refuses to start")


def test_model_module_outside_its_folder_is_refused(tmp_path, model_path):
    """modules.json naming a folder elsewhere on the machine would load files the digest cannot cover."""
    model = tmp_path / "model"
    shutil.copytree(model_path, model)
    shutil.copytree(model / "1_Pooling", tmp_path / "pooling")
    modules = json.loads((model / "modules.json").read_text())
    modules[1]["path"] = str(tmp_path / "pooling")
    (model / "modules.json").write_text(json.dumps(modules))
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"), "--model", str(model))
    assert result.returncode == 1
    assert f"error: {model}/modules.json: module path '{tmp_path}/pooling' leaves the model folder" in result.stderr
    assert not (tmp_path / "out").exists()
    record("security", "model module outside its folder", "refused before any worker starts")


def test_code_shipped_with_a_model_is_never_run(tmp_path, model_path):
    model = tmp_path / "model"
    shutil.copytree(model_path, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "custom.Model", "AutoConfig": "custom.Config"}
    (model / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "custom-code-ran"
    (model / "custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig as Config, BertModel as Model\n"
    )
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"), "--model", str(model))
    # Refused, not loaded as plain BERT: a model that ships its own code (jina-v2 says model_type
    # "bert") would give other vectors without it.
    assert result.returncode == 1
    assert "AutoModel is 'custom.Model', custom code the model ships in custom.py" in result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    record(
        "security",
        "model folder shipping Python code (auto_map)",
        "refused before any worker starts, naming custom.py",
        _inputs(tmp_path),
    )


def test_a_model_folder_loading_weights_from_elsewhere_or_shipping_tokenizer_code_is_refused(tmp_path):
    """A shard index naming a file outside the folder loaded it (and the folder's digest missed it); a
    tokenizer naming its own fast class second, after none, passed the remote-code check; JSON of other
    types than sentence-transformers writes ended in a traceback. Each is now refused naming its file."""
    base = save_family("bert", tmp_path / "base", size="tiny")

    def variant(name: str, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(base, folder)
        edit(folder)
        return folder

    def shards_elsewhere(folder: Path) -> None:
        (folder / "model.safetensors").rename(tmp_path / f"{folder.name}.safetensors")
        index = {"weight_map": {"embeddings.word_embeddings.weight": f"../{folder.name}.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    def tokenizer_code(folder: Path) -> None:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["auto_map"] = {"AutoTokenizer": [None, "tok.Fast"]}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))

    def modules_not_objects(folder: Path) -> None:
        (folder / "modules.json").write_text('["x"]')

    cases = [
        (shards_elsewhere, "model.safetensors.index.json: weight_map names '../shards_elsewhere.safetensors'; "
         "shards must be files beside it, in the model's folder"),
        (tokenizer_code, "tokenizer_config.json: AutoTokenizer is 'tok.Fast', custom code the model ships in tok.py"),
        (modules_not_objects,
         ": a file of the model folder holds values of other types than sentence-transformers writes "
         "(AttributeError: 'str' object has no attribute 'get')"),
    ]  # fmt: skip
    for edit, message in cases:
        folder = variant(edit.__name__, edit)
        with pytest.raises(ModelFolderError) as refused:
            read_model_folder(folder).weights_sha256()
        assert str(refused.value).startswith(f"{folder}{'/' if message[0] != ':' else ''}{message}"), refused.value
    record("security", "model weights sharded to files outside the folder", "refused before any worker starts")


def test_values_in_the_data_are_never_paths_or_commands(tmp_path):
    marker = tmp_path / "pwned"
    ids = ["../../escaped", f"$(touch {marker})", "/etc/passwd", "x;rm -rf ~"]
    texts = [f"`touch {marker}`", "'; DROP TABLE kb; --", "{{7*7}} ${jndi:ldap://x}", "%s%n%x"]
    write_parquet(tmp_path / "in" / "a.parquet", id=ids, text=texts)
    result = run_cli("--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["manifest.json", *manifest["files"]["embeddings"], *manifest["files"]["rejected"]]
    )
    assert sorted(pq.read_table(sorted((tmp_path / "out").glob("embeddings-*.parquet")))["id"].to_pylist()) == sorted(
        ids
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"] and not marker.exists()
    record(
        "security",
        "ids and texts shaped like paths and commands",
        "kept as data; no file made",
        _inputs(tmp_path),
        tmp_path / "out",
    )


def test_secrets_passed_as_options_are_never_printed_or_written(tmp_path):
    secret = "TOPSECRET-3f9a7c"
    write_parquet(tmp_path / "in" / "a.parquet", **GOOD)
    result = run_cli(
        "--input", f"{tmp_path}/in/*.parquet", "--output", str(tmp_path / "out"),
        f"--s3_secret_access_key={secret}", f"--s3_access_key_id={secret}-id",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert not [p.name for p in (tmp_path / "out").iterdir() if secret.encode() in p.read_bytes()]
    record(
        "security",
        "credentials passed as Beam options",
        "in no log line and no output file",
        _inputs(tmp_path),
        tmp_path / "out",
    )
