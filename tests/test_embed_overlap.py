"""With chunks in flight (as on CUDA: each tokenised on one thread and queued on the device from
another, while the DoFn's own thread passes on the rows of the chunks before), the embed step writes
exactly what it writes without."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field, fields

import pyarrow as pa
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from encoder.pooled_encoder import Launched
from samples.knowledge_base import make_rows
from schemas.outputs import METADATA_KEY
from transforms.embed import EncoderHandler, _Embed
from transforms.validate import STATS

SCHEMA = pa.schema(
    [("id", pa.string()), ("embedding", pa.list_(pa.float32(), 384))],
    metadata={METADATA_KEY: json.dumps({"dim": 384, "vector_dtype": "float32"}).encode()},
)


def _unwindowed(output):
    """finish_bundle's outputs carry their window."""
    if isinstance(output, TaggedOutput) and isinstance(output.value, WindowedValue):
        return TaggedOutput(output.tag, output.value.value)
    return output.value if isinstance(output, WindowedValue) else output


@dataclass(frozen=True)
class _CollectRecorded(Launched):
    events: list = field(default_factory=list, compare=False)

    def collect(self):
        self.events.append(("collect", len(self.lengths), threading.current_thread().name))
        return super().collect()


@dataclass(frozen=True)
class _Recorded(EncoderHandler):
    """The real handler, noting each chunk (by its rows) as it is queued and as it is collected, and on
    which thread."""

    events: list = field(default_factory=list, compare=False)

    def launch_inference(self, encoder, tokenized, on_batch=None, sharers=1):
        launched = super().launch_inference(encoder, tokenized, on_batch, sharers)
        self.events.append(("launch", len(launched.lengths), threading.current_thread().name))
        return _CollectRecorded(**{f.name: getattr(launched, f.name) for f in fields(launched)}, events=self.events)


def _run(
    overlap: bool, model_path: str, batches: list[pa.RecordBatch], handler: EncoderHandler | None = None
) -> tuple[pa.Table, Counter, int]:
    """The step's embeddings and stats, and how many record batches of embeddings `process` passed on
    (the rest came from `finish_bundle`)."""
    handler = handler or EncoderHandler(model=model_path, device="cpu")
    dofn = _Embed(handler, "text", SCHEMA, 50, 60.0, overlap=overlap)
    dofn.setup()
    dofn.start_bundle()
    during = [out for batch in batches for out in dofn.process(batch)]
    outputs = [_unwindowed(out) for out in [*during, *dofn.finish_bundle()]]
    dofn.teardown()
    stats = sum((out.value for out in outputs if isinstance(out, TaggedOutput) and out.tag == STATS), Counter())
    embedded = pa.Table.from_batches([out for out in outputs if isinstance(out, pa.RecordBatch)])
    return embedded, stats, sum(isinstance(out, pa.RecordBatch) for out in during)


def test_chunks_in_flight_give_the_same_output(model_path):
    rows = make_rows(170, seed=5).select(["id", "text"])
    batches = rows.to_batches(max_chunksize=30)  # chunks of 60, 60, 30 and the rest at the end
    plain, plain_stats, _ = _run(False, model_path, batches)
    overlapped, overlapped_stats, _ = _run(True, model_path, batches)
    assert overlapped.column("id").to_pylist() == rows.column("id").to_pylist()
    assert overlapped.equals(plain)
    assert overlapped_stats == plain_stats and plain_stats["passages_embedded"] == 170


def test_chunks_are_queued_on_a_thread_of_their_own_while_the_rows_of_earlier_ones_are_passed_on(model_path):
    """The GPU's queue holds only so many kernels, past which queuing a batch waits for the GPU: queued
    from a thread of their own, a chunk's batches keep the GPU busy while the DoFn's thread reads, joins
    and writes other chunks' rows. On CPU, where queuing a batch runs it, the order is the same."""
    rows = make_rows(175, seed=6).select(["id", "text"])
    sizes, start, batches = (30, 30, 55, 50, 10), 0, []  # chunks of 60, 55, 50 and, at the end, 10 rows
    for size in sizes:
        batches.append(rows.slice(start, size).combine_chunks().to_batches()[0])
        start += size
    handler = _Recorded(model=model_path, device="cpu")
    embedded, _, passed_on_by_process = _run(True, model_path, batches, handler)
    launches = [(size, thread) for kind, size, thread in handler.events if kind == "launch"]
    collects = [(size, thread) for kind, size, thread in handler.events if kind == "collect"]
    assert [size for size, _ in launches] == [size for size, _ in collects] == [60, 55, 50, 10]
    assert {thread for _, thread in launches} == {"launch_0"}
    assert {thread for _, thread in collects} == {threading.current_thread().name}
    for launch, collect in zip(launches, collects, strict=True):
        assert handler.events.index(("launch", *launch)) < handler.events.index(("collect", *collect))
    assert passed_on_by_process == 1  # the first chunk, once the third was gathered (CHUNKS_IN_FLIGHT 2)
    assert embedded.column("id").to_pylist() == rows.column("id").to_pylist()
    assert embedded.equals(_run(False, model_path, batches)[0])
