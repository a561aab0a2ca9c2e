"""Embed valid rows with the pooled encoder, held once per worker process.

`EncoderHandler` is the seam between Beam and the encoder (as Beam's
ModelHandler): how to load the model and how to launch one chunk of tokenised texts.
The encoder cuts each chunk into token-budget batches; this module only
moves Arrow batches and counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils import shared

from encoder.devices import device_type
from encoder.quantize import Float16Overflow, Quantizer
from encoder.tokens import TextTokenizer, Tokenized
from schemas.outputs import EMBEDDING_COLUMN, read_model_block, vector_array
from transforms import METRICS_NAMESPACE, in_global_window
from transforms.model_store import model_folder
from transforms.progress_report import ProgressReport
from transforms.validate import STATS

if TYPE_CHECKING:
    from encoder import PooledEncoder
    from encoder.pooled_encoder import Launched

_LOG = logging.getLogger(__name__)
# Rows a CUDA worker gathers at least before encoding: the encoder sorts a chunk by length, and at
# GPU budgets a chunk of 4,096 knowledge-base rows left 1.094x padding against 1.036x for 16,384
# (131,072-token budget, tests/test_encoder.py).
CUDA_CHUNK_ROWS = 16384
# Chunks a worker that overlaps (on CUDA) holds past the tokenizer before it waits for the oldest:
# one on the device while the next is tokenised and queued, and the one before is passed on.
CHUNKS_IN_FLIGHT = 2


@dataclass(frozen=True)
class EncoderHandler:
    """Everything a worker needs to load the encoder and run it; `None` model = the packaged default.

    The default is resolved on each worker, since site-packages paths differ
    between the launching machine and the workers; `folder_sha256` makes sure
    every worker loads the model folder the launcher recorded.
    """

    model: str | None
    folder_sha256: str | None = None
    device: str = "auto"
    dtype: str = "float32"  # resolved by the launcher: never "auto" here
    max_seq_length: int | None = None
    prompt_name: str | None = None
    prompt: str | None = None
    truncate_dim: int | None = None
    cpu_kernels: str = "auto"
    token_budget: int | None = None  # None: the encoder's default for its device
    threads: int | None = None  # torch CPU threads in each worker process; None: torch's default

    def load_model(self, device: str | None = None) -> PooledEncoder:
        from encoder import PooledEncoder  # torch and transformers: in workers, not in the launcher

        folder = model_folder(self.model, self.folder_sha256)
        started = time.monotonic()
        encoder = PooledEncoder(
            folder,
            device or self.device,
            self.dtype,
            self.max_seq_length,
            self.prompt_name,
            threads=self.threads,
            prompt=self.prompt,
            truncate_dim=self.truncate_dim,
            cpu_kernels=self.cpu_kernels,
        )
        _LOG.info("loaded %s on %s in %.1fs", folder.path, encoder.device, time.monotonic() - started)
        return encoder

    def load_replicas(self) -> EncoderReplicas:
        """One encoder per device of this machine that `device` names (each GPU, or the CPU)."""
        from encoder.pooled_encoder import replica_devices

        return EncoderReplicas([self.load_model(str(device)) for device in replica_devices(self.device)])

    def load_tokenizer(self) -> TextTokenizer:
        """The model's tokenizer alone, for splitting texts into passages before the join."""
        folder = model_folder(self.model, self.folder_sha256)
        return TextTokenizer(folder, self.max_seq_length, self.prompt_name, self.prompt)

    def launch_inference(
        self,
        encoder: PooledEncoder,
        tokenized: Tokenized,
        on_batch: Callable[[int], None] | None = None,
        sharers: int = 1,
    ) -> Launched:
        """`tokenized`'s batches queued on the encoder's device (on CPU, run); `collect()` gives the
        vectors. `sharers`: the threads holding `encoder`, which share its default token budget."""
        return encoder.launch(tokenized, self.token_budget, on_batch, sharers)


class EncoderReplicas:
    """A worker process's encoders, one per device, handed to its DoFn threads evenly: on a machine
    with several GPUs one process (Dataflow with one SDK process and several harness threads) keeps
    every GPU busy instead of stacking its threads on the first."""

    def __init__(self, encoders: list[PooledEncoder]) -> None:
        self.encoders = encoders
        self._holders = [0] * len(encoders)
        self._lock = threading.Lock()
        self._progress: ProgressReport | None = None

    def progress(self, interval: float) -> ProgressReport:
        """The process's one count of rows embedded, which all its threads add to: the launcher
        keeps each process's latest report, so a count per thread would show one thread's rows."""
        with self._lock:
            if self._progress is None:
                self._progress = ProgressReport(interval)
            return self._progress

    def take(self) -> PooledEncoder:
        """The encoder fewest threads hold so far (the first such)."""
        with self._lock:
            chosen = self._holders.index(min(self._holders))
            self._holders[chosen] += 1
            return self.encoders[chosen]

    def sharers(self, encoder: PooledEncoder) -> int:
        """The threads holding `encoder` now: on a GPU their batches are in memory at once."""
        with self._lock:
            return self._holders[self.encoders.index(encoder)]

    def give_back(self, encoder: PooledEncoder) -> None:
        """A thread's DoFn is torn down (Beam replaces DoFns after a failure, drops idle ones): the
        threads still running must not all crowd onto the GPUs it did not hold."""
        with self._lock:
            self._holders[self.encoders.index(encoder)] -= 1


class _Embed(beam.DoFn):
    """Gathers rows up to `chunk_rows` before encoding: the more rows the encoder
    sorts by length at once, the less padding its batches carry. On CUDA (or with
    `overlap`) a chunk is tokenised on one thread and its batches queued on the GPU
    from another, while this one passes on the rows of the chunks before it
    (CHUNKS_IN_FLIGHT): the GPU waits neither for the tokenizer nor for the reading,
    joining and writing that other chunks' rows take on the host. Queuing runs on a
    thread of its own because the GPU's queue holds only so many kernels: past
    them, queuing waits for the GPU."""

    def __init__(
        self,
        handler: EncoderHandler,
        text: str,
        schema: pa.Schema,
        chunk_rows: int,
        log_every: float,
        overlap: bool | None = None,
    ) -> None:
        self._handler = handler
        self._text = text
        self._schema = schema
        self._quantizer = Quantizer.from_block(read_model_block(schema))  # float32 -> the stored values
        self._chunk_rows = chunk_rows
        self._log_every = log_every
        self._overlap = overlap  # None: on CUDA only (on CPU both would compete for the same cores)
        self._shared = shared.Shared()
        self._embedded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "passages_embedded")
        self._truncated = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rows_truncated")
        self._tokens = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "tokens")

    def setup(self) -> None:
        self._tokenizing: ThreadPoolExecutor | None = None
        # Loaded on the first rows (a worker may get none). The replicas are held here: Beam's
        # shared map keeps only the object last acquired in the process alive.
        self._replicas: EncoderReplicas | None = None
        self._encoder: PooledEncoder | None = None
        cuda = device_type(self._handler.device) == "cuda"
        if cuda:
            self._chunk_rows = max(self._chunk_rows, CUDA_CHUNK_ROWS)
        overlap = cuda if self._overlap is None else self._overlap
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="tokenize") if overlap else None
        self._launching = ThreadPoolExecutor(1, thread_name_prefix="launch") if overlap else None
        self._progress: ProgressReport | None = None  # the process's, with its encoders

    def teardown(self) -> None:
        for executor in (self._tokenizing, self._launching):
            if executor is not None:
                executor.shutdown()
        if self._replicas is not None and self._encoder is not None:
            self._replicas.give_back(self._encoder)
            self._encoder = None

    def start_bundle(self) -> None:
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._in_flight: deque[tuple[pa.Table, Future[Launched]]] = deque()  # oldest first

    def process(self, batch: pa.RecordBatch) -> Iterator:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self._chunk_rows:
            yield from self._embed_pending()

    def finish_bundle(self) -> Iterator:
        for output in chain(self._embed_pending(), self._pass_on(keep=0)):
            yield in_global_window(output)
        if self._progress is not None:
            self._progress.flush()

    def _embed_pending(self) -> Iterator:
        if not self._pending:
            return
        units = pa.Table.from_batches(self._pending).combine_chunks()
        self._pending, self._pending_rows = [], 0
        if self._encoder is None:
            self._replicas = self._shared.acquire(self._handler.load_replicas, tag=repr(self._handler))
            self._encoder = self._replicas.take()
            self._progress = self._replicas.progress(self._log_every)
            self._progress.add(0)  # rows have reached a loaded model: start-up ends here
        texts = units.column(self._text).chunk(0)
        if self._tokenizing is None:
            yield from self._collected(units, self._launch(self._encoder.tokenizer.encode(texts)))
            return
        tokenizing = self._tokenizing.submit(self._encoder.tokenizer.encode, texts)
        self._in_flight.append((units, self._launching.submit(self._launch_when_tokenized, tokenizing)))
        yield from self._pass_on(keep=CHUNKS_IN_FLIGHT)

    def _pass_on(self, keep: int) -> Iterator:
        """The rows of the oldest chunks in flight, once the device is done with them, until `keep` are left."""
        while len(self._in_flight) > keep:
            units, launching = self._in_flight.popleft()
            yield from self._collected(units, launching.result())

    def _launch_when_tokenized(self, tokenizing: Future[Tokenized]) -> Launched:
        return self._launch(tokenizing.result())

    def _launch(self, tokenized: Tokenized) -> Launched:
        sharers = self._replicas.sharers(self._encoder)
        return self._handler.launch_inference(self._encoder, tokenized, self._progress.add, sharers)

    def _collected(self, units: pa.Table, launched: Launched) -> Iterator:
        from encoder.pooled_encoder import NonFiniteVectors

        rows = units.num_rows
        try:
            encoded = launched.collect()
            stored = self._quantizer.quantize(encoded.embeddings)
        except (NonFiniteVectors, Float16Overflow) as e:  # the units' first column is the id
            raise e.named(units.column(0).take(pa.array(e.positions[:5])).to_pylist()) from None
        vectors = vector_array(stored, self._schema.field(EMBEDDING_COLUMN).type)
        carried = units.select(self._schema.names[:-1]).columns
        yield pa.RecordBatch.from_arrays([*(c.chunks[0] for c in carried), vectors], schema=self._schema)
        truncated = int(encoded.truncated.sum())
        clipped_vectors, clipped_values = self._quantizer.clipped(encoded.embeddings)
        self._embedded.inc(rows)
        self._truncated.inc(truncated)
        self._tokens.inc(encoded.tokens)
        yield beam.pvalue.TaggedOutput(
            STATS,
            Counter(
                passages_embedded=rows,
                rows_truncated=truncated,
                tokens=encoded.tokens,
                padded_tokens=encoded.padded_tokens,
                vectors_clipped=clipped_vectors,
                values_clipped=clipped_values,
                zero_vectors=int((~encoded.embeddings.any(axis=1)).sum()),
            ),
        )


class EmbedRows(beam.PTransform):
    """Record batches of units (passages or rows: the embeddings schema but the vector, and the text
    column `text`) in; record batches of the embeddings schema out, plus `stats` Counters."""

    def __init__(
        self, handler: EncoderHandler, text: str, schema: pa.Schema, chunk_rows: int, log_every: float
    ) -> None:
        super().__init__()
        self._dofn = _Embed(handler, text, schema, chunk_rows, log_every)

    def expand(self, shards: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return shards | "Encode" >> beam.ParDo(self._dofn).with_outputs(STATS, main="embeddings")
