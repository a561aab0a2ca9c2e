"""Consecutive small row groups are read as one work item: each item opens its file and parses a
footer that grows with the row groups, so one item per row group cost the square of their number."""

from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from transforms.read import SPAN_ROWS, PlannedFile, ReadParquetFiles, RowGroups, _ListRowGroups


def test_two_thousand_row_groups_are_read_in_two_spans_every_row_once_in_place(tmp_path):
    path = tmp_path / "many.parquet"
    rows = 100_000
    pq.write_table(pa.table({"id": np.arange(rows), "text": [f"t{i}" for i in range(rows)]}), path, row_group_size=50)
    stat = os.stat(path)
    planned = PlannedFile(str(path), stat.st_size, stat.st_mtime)
    spans = list(_ListRowGroups(lambda schema, path: None).process(planned))
    ends = -(-SPAN_ROWS // 50)  # row groups until a span holds SPAN_ROWS rows
    assert [(s.first, s.stop, s.first_row) for s in spans] == [(0, ends, 0), (ends, 2000, ends * 50)]
    assert [s.described() for s in spans] == [f"row groups 0-{ends - 1}", f"row groups {ends}-1999"]
    assert RowGroups(planned, 3, 4, 150).described() == "row group 3"

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        batches = pipeline | ReadParquetFiles([planned], ["id", "text"], lambda schema, path: None, 4096)
        misplaced = batches | "Misplaced" >> beam.Map(lambda b: int((b.row_numbers != b.batch["id"].to_numpy()).sum()))
        counted = batches | "Rows" >> beam.Map(lambda b: len(b.row_numbers))
        assert_that(misplaced | "All misplaced" >> beam.CombineGlobally(sum), equal_to([0]), label="in place")
        assert_that(counted | "All rows" >> beam.CombineGlobally(sum), equal_to([rows]), label="every row")
