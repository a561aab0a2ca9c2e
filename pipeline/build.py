"""Assemble the job's graph: read -> validate -> join with the previous run -> embed -> write, then the manifest."""

from __future__ import annotations

from functools import partial

import apache_beam as beam
import pyarrow as pa

from pipeline.plan import JobPlan
from schemas.inputs import check_shard, without_encodings
from schemas.outputs import (
    CHUNK_COLUMN,
    CONTENT_HASH_COLUMN,
    EMBEDDING_COLUMN,
    PASSAGE_FIELDS,
    check_previous_file,
    deletes_schema,
    embeddings_schema,
    rejects_schema,
    restated_columns,
)
from transforms.embed import EmbedRows
from transforms.incremental import DELETES, RESTATED, REUSED, ChangeSet, JoinPrevious
from transforms.passages import MakeUnits
from transforms.progress_report import ReportRejected
from transforms.read import ReadParquetFiles
from transforms.validate import REJECTED, STATS, ValidateRows
from transforms.write import CHANGES_DIR, WriteBatches, WriteManifest


def _read_previous(pipeline: beam.Pipeline, plan: JobPlan, schema, compared: list[str]) -> beam.PCollection:
    """The previous output's ids, chunks and content hashes, with its vectors when they can be reused,
    and the `compared` columns."""
    if not plan.previous or not plan.previous.files:
        return pipeline | "NoPrevious" >> beam.Create([])
    names = [plan.columns.id.name, CONTENT_HASH_COLUMN]
    names += [CHUNK_COLUMN] if plan.previous.passages else []
    names += [EMBEDDING_COLUMN] if plan.previous.reuse else []
    # A previous run of passages wrote its passage numbers as `chunk`, whatever tonight's carried
    # column of that name (a pre-split knowledge base's own, without passages) holds.
    own = [field for field in schema if field.name != CHUNK_COLUMN or not plan.previous.passages]
    has_chunk = any(field.name == CHUNK_COLUMN for field in own)
    expected = pa.schema([*own, *([] if has_chunk else PASSAGE_FIELDS[:1])])
    check = partial(check_previous_file, expected=expected, names=names)
    advice = (
        f"; a file of --previous {plan.previous.path}: pass another finished run, or leave --previous out to embed "
        "every row afresh"
    )
    return pipeline | "ReadPrevious" >> ReadParquetFiles(
        plan.previous.files, [*names, *compared], check, plan.rows_per_batch, advice
    )


def _same_digests(ours: pa.DataType, theirs: pa.DataType) -> bool:
    """Whether equal digests of a column's values under these types mean equal values. Digests hash
    the values' bytes: a struct's field names, a number's sign, width or scale and a time's unit are
    not in them, so a column whose type changed restates every reused row; the text types and lists
    differ in offsets only (pandas 3 writes large_string, pyarrow string), and a dictionary is hashed
    as its values (writers dictionary-encode a column one night and not the next), at any depth."""
    return without_encodings(ours) == without_encodings(theirs)


def build_pipeline(pipeline: beam.Pipeline, plan: JobPlan, spill_dir: str | None = None) -> None:
    """`spill_dir`: a folder on this machine for the join's shuffled values (local runs; see transforms.spill)."""
    passages = plan.chunking is not None
    rejected_schema = rejects_schema(plan.columns)
    output_schema = embeddings_schema(plan.columns, plan.model_block, passages)
    rows = (
        pipeline
        | "Read"
        >> ReadParquetFiles(
            plan.input_files, plan.columns.names, partial(check_shard, columns=plan.columns), plan.rows_per_batch
        )
        | "Validate" >> ValidateRows(plan.columns, rejected_schema)
    )
    units = rows.valid | "MakeUnits" >> MakeUnits(
        plan.columns, plan.model_block["prompt"], rejected_schema, plan.rows_per_batch, plan.handler, plan.chunking
    )
    change_set = None
    if plan.previous and plan.previous.passages == passages:
        # (With rows one night and passages the next, the keys differ in kind: loaders replace the
        # table then.) A column added or dropped since the previous run restates every reused row,
        # as does one whose type changed (_same_digests).
        offsets = [f.name for f in PASSAGE_FIELDS[1:]] if passages else []
        written = {name: output_schema.field(name).type for name in [*offsets, *(f.name for f in plan.columns.carry)]}
        theirs = {f.name: f.type for f in plan.previous.columns}
        restated = restated_columns(plan.columns, passages)
        change_set = ChangeSet(
            restated,
            deletes_schema(plan.columns, passages),
            written.keys() == theirs.keys() and all(_same_digests(written[n], theirs[n]) for n in written),
        )
    compared = change_set.restated if change_set and change_set.comparable else []
    previous = _read_previous(pipeline, plan, output_schema, compared)
    joined = (units.units, previous) | "JoinPrevious" >> JoinPrevious(
        plan.columns.id.name,
        output_schema,
        rejected_schema,
        reuse=bool(plan.previous and plan.previous.reuse),
        passages=passages,
        previous_passages=bool(plan.previous and plan.previous.passages),
        buckets=plan.join_buckets,
        change_set=change_set,
        spill_dir=spill_dir,
        previous=plan.previous.path if plan.previous else None,
    )
    embedded = joined["to_embed"] | "Embed" >> EmbedRows(
        plan.handler, plan.columns.text, output_schema, plan.rows_per_batch, plan.progress_interval
    )

    def write(name: str, schema: pa.Schema, dictionary: list[str]) -> WriteBatches:
        return WriteBatches(plan.owner, name, schema, dictionary, plan.max_file_bytes)

    carried = [f.name for f in plan.columns.carry]  # ids, hashes and vectors rarely repeat: no dictionary
    # Two writes rather than one after a Flatten: the local runner would hold every vector of a
    # Flatten's inputs in the launcher's memory (measured: 126 MB more for 12,000 rows).
    files = {
        "embeddings": (
            embedded.embeddings | "WriteEmbedded" >> write("embeddings", output_schema, carried),
            joined[REUSED] | "WriteReused" >> write("embeddings-reused", output_schema, carried),
        )
        | "AllEmbeddingFiles" >> beam.Flatten(),
        "rejected": (rows[REJECTED], units[REJECTED], joined[REJECTED])
        | "AllRejects" >> beam.Flatten()
        | "ReportRejected" >> beam.ParDo(ReportRejected(plan.progress_interval))
        | "WriteRejected" >> write("rejected", rejected_schema, ["source_file", "reason", "column"]),
    }
    if change_set:  # the same rows written again, apart: a loader applies these alone
        files["upserts"] = (
            embedded.embeddings | "WriteUpserts" >> write(f"{CHANGES_DIR}/upserts", output_schema, carried),
            joined[RESTATED] | "WriteRestated" >> write(f"{CHANGES_DIR}/upserts-restated", output_schema, carried),
        ) | "AllUpsertFiles" >> beam.Flatten()
        files["deletes"] = joined[DELETES] | "WriteDeletes" >> write(f"{CHANGES_DIR}/deletes", change_set.deletes, [])
    (
        (rows[STATS], units[STATS], joined[STATS], embedded[STATS])
        | "MergeStats" >> beam.Flatten()
        | "Manifest" >> WriteManifest(plan.owner, plan.header, files)
    )
