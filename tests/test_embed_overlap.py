"""With one chunk in flight (the next tokenised while the model runs this one, as on CUDA), the
embed step writes exactly what it writes without."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

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


def _run(overlap: bool, model_path: str, batches: list[pa.RecordBatch]) -> tuple[pa.Table, Counter]:
    dofn = _Embed(EncoderHandler(model=model_path, device="cpu"), "text", SCHEMA, 50, 60.0, overlap=overlap)
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
