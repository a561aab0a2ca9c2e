"""How many buckets the id join settles apart: enough for tonight's rows, counted from the footers
where a local run reads them, and for --previous's rows, whichever are more."""

from __future__ import annotations

from pipeline import plan
from pipeline.plan import plan_job
from pipeline.run import make_options
from tests.conftest import run_cli, write_parquet


def test_buckets_follow_tonights_counted_rows_and_the_previous_runs(tmp_path, monkeypatch):
    day1 = write_parquet(tmp_path / "day1.parquet", id=list(range(60)), text=[f"text {i}" for i in range(60)])
    previous = tmp_path / "previous"
    result = run_cli("--input", str(day1), "--output", str(previous))
    assert result.returncode == 0, result.stderr
    write_parquet(tmp_path / "day2" / "0.parquet", id=[0], text=["text 0"])  # a small first file
    write_parquet(tmp_path / "day2" / "1.parquet", id=list(range(1, 30)), text=[f"text {i}" for i in range(1, 30)])
    monkeypatch.setattr(plan, "ROWS_PER_JOIN_BUCKET", 5)

    def buckets(*extra: str) -> int:
        arguments = ["--input", str(tmp_path / "day2" / "*.parquet"), "--output", str(tmp_path / "out")]
        return plan_job(make_options([*arguments, "--plan_only", *extra])).join_buckets

    assert buckets() == 6  # 30 rows in the footers; the first file's 1 row x 2 files made the least, 4
    assert buckets("--previous", str(previous)) == 12  # yesterday's 60 rows, each with its vector
