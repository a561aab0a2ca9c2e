"""The README's vector-database example, run as written on the job's real output."""

from __future__ import annotations

import re
from pathlib import Path

import lancedb
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_cli, write_parquet


def readme_example(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", readme, re.S).group(1)


def test_lancedb_example_finds_the_right_passage(tmp_path, monkeypatch, capsys):
    shard = write_parquet(
        tmp_path / "kb" / "part-0.parquet",
        id=["backups", "vpn", "keys"],
        text=[
            "Backups run every night at 02:00 UTC and are kept for 30 days.",
            "The VPN gateway drops connections when the certificate expires.",
            "API keys expire after 180 days and must be rotated by their owners.",
        ],
    )
    result = run_cli("--input", str(shard), "--output", str(tmp_path / "kb-embeddings"))
    assert result.returncode == 0, result.stderr
    monkeypatch.chdir(tmp_path)
    example = compile(readme_example("lancedb"), "README.md", "exec")
    exec(example, {})
    printed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in printed if line] == ["backups", "keys", "vpn"]
    assert lancedb.connect("kb.lancedb").open_table("kb").count_rows() == 3
    # A rerun killed midway: one of its files in place, no manifest. The example loads nothing of it.
    Path("kb-embeddings/manifest.json").unlink()
    pq.write_table(pq.read_table(shard).slice(0, 1), "kb-embeddings/embeddings-00000-of-00001.parquet")
    with pytest.raises(FileNotFoundError):
        exec(example, {})
    assert lancedb.connect("kb.lancedb").open_table("kb").count_rows() == 3
