"""With chunks in flight (as on CUDA: the newest tokenised on a thread, the one before queued on the
device, the one before that collected), the embed step writes exactly what it writes without, and a
chunk is queued before the one before it is waited for."""

from __future__ import annotations

import json
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
        self.events.append(("collect", len(self.lengths)))
        return super().collect()


@dataclass(frozen=True)
class _Recorded(EncoderHandler):
    """The real handler, noting when each chunk (by its rows) is queued and when it is collected."""

    events: list = field(default_factory=list, compare=False)

    def launch_inference(self, encoder, tokenized, on_batch=None, sharers=1):
        launched = super().launch_inference(encoder, tokenized, on_batch, sharers)
        self.events.append(("launch", len(launched.lengths)))
        return _CollectRecorded(**{f.name: getattr(launched, f.name) for f in fields(launched)}, events=self.events)


def _run(
    overlap: bool, model_path: str, batches: list[pa.RecordBatch], handler: EncoderHandler | None = None
) -> tuple[pa.Table, Counter]:
    handler = handler or EncoderHandler(model=model_path, device="cpu")
    dofn = _Embed(handler, "text", SCHEMA, 50, 60.0, overlap=overlap)
    dofn.setup()
    dofn.start_bundle()
    outputs = [out for batch in batches for out in dofn.process(batch)]
    outputs = [_unwindowed(out) for out in [*outputs, *dofn.finish_bundle()]]
    dofn.teardown()
    stats = sum((out.value for out in outputs if isinstance(out, TaggedOutput) and out.tag == STATS), Counter())
    return pa.Table.from_batches([out for out in outputs if isinstance(out, pa.RecordBatch)]), stats


def test_one_chunk_in_flight_gives_the_same_output(model_path):
    rows = make_rows(170, seed=5).select(["id", "text"])
    batches = rows.to_batches(max_chunksize=30)  # chunks of 60, 60, 30 and the rest at the end
    plain, plain_stats = _run(False, model_path, batches)
    overlapped, overlapped_stats = _run(True, model_path, batches)
    assert overlapped.column("id").to_pylist() == rows.column("id").to_pylist()
    assert overlapped.equals(plain)
    assert overlapped_stats == plain_stats and plain_stats["passages_embedded"] == 170


def test_a_chunk_is_queued_on_the_device_before_the_one_before_it_is_waited_for(model_path):
    """On CUDA the GPU then runs one chunk while the host reads, joins and writes the rows of others;
    on CPU, where queuing a chunk runs it, the order is the same."""
    rows = make_rows(175, seed=6).select(["id", "text"])
    sizes, start, batches = (30, 30, 55, 50, 10), 0, []  # chunks of 60, 55, 50 and, at the end, 10 rows
    for size in sizes:
        batches.append(rows.slice(start, size).combine_chunks().to_batches()[0])
        start += size
    handler = _Recorded(model=model_path, device="cpu")
    embedded, _ = _run(True, model_path, batches, handler)
    assert handler.events == [
        ("launch", 60),
        ("launch", 55),
        ("collect", 60),
        ("launch", 50),
        ("collect", 55),
        ("launch", 10),
        ("collect", 50),
        ("collect", 10),
    ]
    assert embedded.column("id").to_pylist() == rows.column("id").to_pylist()
    assert embedded.equals(_run(False, model_path, batches)[0])
