"""The pooled encoder: tokenize, then run the folder's modules (transformer, pooling, dense, normalise ...)."""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from transformers.utils import logging as transformers_logging

from encoder import cpu_flags, onednn
from encoder.batching import padded_widths, token_budget_batches
from encoder.devices import device_type, resolve_dtype
from encoder.heap import HeapTrimmer
from encoder.model_folder import ModelFolder
from encoder.modules import Features, build_input, build_module
from encoder.modules.static_embedding import StaticEmbedding
from encoder.modules.transformer import Transformer
from encoder.tokens import TextTokenizer, Tokenized

# Padded tokens per forward pass. On CPU small batches of similar length are
# fastest (measured on 2 cores, all-MiniLM-L6-v2: 2048 ran 1.7x faster than
# 16384, with 3% padding instead of 25%); a GPU wants large batches to fill it.
CPU_TOKEN_BUDGET = 2048
# That budget suits a model whose tokens each pass through about as many linear-layer weights as
# all-MiniLM-L6-v2's 10.6 million. A smaller model costs less per token while each batch's
# dispatch stays, so it gets a budget larger in proportion, up to MAX_CPU_TOKEN_BUDGET: a 1-layer
# model of hidden size 32 on one Zen 4 thread ran 5,755 rows/s at 2,048 tokens, 7,754 at 8,192.
CPU_BUDGET_WEIGHTS = 10_600_000
MAX_CPU_TOKEN_BUDGET = 4 * CPU_TOKEN_BUDGET
MIN_CUDA_TOKEN_BUDGET, MAX_CUDA_TOKEN_BUDGET = 8192, 131072
# A static model only averages token vectors: per-batch overhead is what costs there.
STATIC_TOKEN_BUDGET = 1 << 16
# On CUDA, padded tokens per batch at most this many times the real ones (see encoder.batching).
CUDA_MAX_PADDING = 1.05
_LOG = logging.getLogger(__name__)
CPU_KERNELS = ("auto", "onednn", "torch")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class NonFiniteVectors(ValueError):
    """The model gave infinite or NaN values for some texts (float16 overflows models trained in
    bfloat16): no such vector is written. `positions`: those texts' places in the encoded list."""

    def __init__(self, positions: np.ndarray, dtype: torch.dtype, which: str | None = None) -> None:
        self.positions, self.dtype = positions, dtype
        which = which or f"texts {positions[:5].tolist()}"
        advice = "; pass --dtype bfloat16 or float32" if dtype == torch.float16 else ""
        super().__init__(
            f"{len(positions)} vectors are not finite ({which} first): the model overflowed in "
            f"{str(dtype).removeprefix('torch.')}{advice}"
        )

    def named(self, ids: list) -> NonFiniteVectors:
        """The same error naming the first texts by their ids."""
        return NonFiniteVectors(self.positions, self.dtype, f"ids {ids}")


@dataclass(frozen=True)
class Encoded:
    """Vectors for a list of texts, in input order, with what it took to make them."""

    embeddings: np.ndarray  # (rows, dim) float32
    tokens: int  # real (unpadded) tokens, special tokens included
    padded_tokens: int  # tokens the model actually ran over
    truncated: np.ndarray  # (rows,) bool: the text was cut at max_seq_length


@dataclass(frozen=True)
class Launched:
    """A chunk's batches queued on the encoder's device. On CUDA they may still be running, and their
    vectors still on their way back to the host, until `collect` waits for them (and for what was queued
    before them on the device's stream, not after): meanwhile the caller can do other work."""

    batches: list[tuple[np.ndarray, torch.Tensor]]  # each batch's rows and their vectors (on the host once copied)
    lengths: np.ndarray
    widths: np.ndarray
    truncated: np.ndarray
    dim: int
    dtype: torch.dtype
    copied: torch.cuda.Event | None  # recorded after the last copy back; None on CPU, where all is done

    def collect(self) -> Encoded:
        """The vectors in input order, once the device is done with them."""
        if self.copied is not None:
            self.copied.synchronize()
        out = np.empty((len(self.lengths), self.dim), dtype=np.float32)
        for rows, vectors in self.batches:
            out[rows] = vectors.numpy()
        not_finite = ~np.isfinite(out).all(axis=1)
        if not_finite.any():
            raise NonFiniteVectors(np.flatnonzero(not_finite), self.dtype)
        padded = sum(len(rows) * int(self.widths[rows[-1]]) for rows, _ in self.batches)
        return Encoded(out, int(self.lengths.sum()), padded, self.truncated)


def resolve_device(device: str) -> torch.device:
    """'auto' means CUDA when present, else CPU (encoder.devices.device_type)."""
    kind = device_type(device)
    return torch.device(kind if device == "auto" else device)


def replica_devices(device: str) -> list[torch.device]:
    """The devices one worker process loads the model onto: every GPU of the machine for `cuda` or
    `auto` without an index (so that one process keeps them all busy), else the one device."""
    chosen = resolve_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
    return [chosen]


def _linear_weights(module: torch.nn.Module) -> int:
    """Weights each token passes through: the linear layers' (embedding tables are looked up, not multiplied)."""
    return sum(layer.weight.numel() for layer in module.modules() if isinstance(layer, torch.nn.Linear))


def cuda_token_budget(free: int, per_token: int, sharers: int = 1) -> int:
    """Padded tokens per forward pass on a card with `free` bytes for activations of `per_token`
    bytes each, when `sharers` threads run batches on it at once: each its share of the memory (Dataflow
    runs several harness threads on one GPU, and each thread's batch is live at once), within
    MIN_CUDA_TOKEN_BUDGET and MAX_CUDA_TOKEN_BUDGET; a small model on a large card keeps the most."""
    return int(np.clip(free // per_token // max(sharers, 1), MIN_CUDA_TOKEN_BUDGET, MAX_CUDA_TOKEN_BUDGET))


class PooledEncoder:
    """A sentence-transformers model run with torch + transformers alone: its modules, in the folder's order.

    Loaded once and used from many threads: `encode` keeps no state between calls but the
    token budget an out-of-memory error lowered.
    """

    def __init__(
        self,
        folder: ModelFolder,
        device: str = "auto",
        dtype: str = "auto",
        max_seq_length: int | None = None,
        prompt_name: str | None = None,
        threads: int | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        cpu_kernels: str = "auto",
    ) -> None:
        if threads:  # per process: the worker processes of one machine share its cores
            torch.set_num_threads(threads)
        self.folder = folder
        dtype = resolve_dtype(dtype, device)
        self.device = resolve_device(device)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if dtype == "float16" and self.device.type == "cpu":
            raise ValueError("float16 runs on CUDA only; use float32 or bfloat16 on CPU")
        if self.device.type == "cuda":
            # Ampere (8.0) and later have bfloat16 tensor cores; torch.cuda.is_bf16_supported() also says
            # yes to older cards, which emulate it slowly.
            if dtype == "bfloat16" and torch.cuda.get_device_capability(self.device) < (8, 0):
                raise ValueError(
                    f"{torch.cuda.get_device_name(self.device)} has no bfloat16; pass --dtype float16 (or float32)"
                )
            if dtype == "float32":  # tensor cores through TF32 (10-bit mantissa products, float32 sums)
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            # Attention without cuDNN's kernel: torch prefers it on Hopper and Blackwell (with cuDNN after
            # 9.15), and it builds an execution plan for each new input shape, which batches cut by tokens
            # and padding take nearly every time. Flash and memory-efficient attention need no plan, and
            # attention is a few percent of an encoder's work at these lengths. Not yet measured: the
            # likeliest cause of an H200 taking 3.6 s over 20,000 rows whose tokenizer and model rates,
            # measured alone, add up to about 1.5 s. Set for the process, once: torch's sdpa_kernel
            # context saves and restores these flags process-wide, so threads entering it at once undo
            # each other's.
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.dim = folder.output_dim(truncate_dim)
        self.dtype = DTYPES[dtype]  # the input module's; the modules after it run in float32
        transformers_logging.disable_progress_bar()
        self.input_module = build_input(folder.input, self.dtype, unread_masks=self.device.type == "cuda").to(
            self.device
        )
        self._linear_weights = _linear_weights(self.input_module)  # counted before oneDNN repacks them
        # Modules after the input one run in float32 whatever the transformer's precision.
        self.modules = torch.nn.ModuleList(build_module(spec) for spec in folder.modules[1:]).to(self.device).eval()
        self.cpu_kernels = self._cpu_kernels(cpu_kernels, self.dtype) if self.device.type == "cpu" else None
        if self.cpu_kernels == "onednn":
            onednn.use_onednn(self.input_module)
        self.tokenizer = TextTokenizer(folder, max_seq_length, prompt_name, prompt)
        if isinstance(self.input_module, Transformer):
            self.input_module.token_types = self.tokenizer.token_types
        self.max_seq_length = self.tokenizer.max_seq_length
        self.heap_trimmer = HeapTrimmer()
        self._budget_cap: int | None = None  # lowered after running out of GPU memory, for the worker's life

    def _cpu_kernels(self, asked: str, dtype: torch.dtype) -> str:
        """The linear kernels, onednn or torch: as asked, or with auto the faster on this CPU (onednn.faster_here)."""
        if asked not in CPU_KERNELS:
            raise ValueError(f"cpu_kernels {asked!r} is not one of {', '.join(CPU_KERNELS)}")
        if asked == "torch" or not onednn.available(dtype):
            return "torch"
        if asked == "onednn":
            return "onednn"
        chosen = "onednn" if onednn.faster_here() else "torch"
        vendor, flags = cpu_flags.cpu_features()
        avx512 = "with" if cpu_flags.AVX512_FLAGS <= flags else "without"
        _LOG.info("CPU linear kernels: %s (%s CPU %s AVX-512)", chosen, vendor or "unknown", avx512)
        return chosen

    def default_token_budget(self, sharers: int = 1) -> int:
        """CPU: the fastest measured, larger for a model smaller than MiniLM (CPU_BUDGET_WEIGHTS).
        CUDA: as much of the card's free memory as activations can safely take, counted once (what
        this process's allocator already holds counts as free to it), shared by the `sharers`
        threads that run batches on this encoder at once (cuda_token_budget); they lower it together
        after an out-of-memory error."""
        if isinstance(self.input_module, StaticEmbedding):
            return STATIC_TOKEN_BUDGET
        if self.device.type != "cuda":
            scaled = CPU_TOKEN_BUDGET * CPU_BUDGET_WEIGHTS // max(self._linear_weights, 1)
            return int(np.clip(scaled, CPU_TOKEN_BUDGET, MAX_CPU_TOKEN_BUDGET))
        return cuda_token_budget(*self._cuda_activation_memory, sharers)

    @functools.cached_property
    def _cuda_activation_memory(self) -> tuple[int, int]:
        """Bytes of the card free for activations, and the bytes each padded token's take."""
        free, _ = torch.cuda.mem_get_info(self.device)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        model = self.input_module.model
        hidden = self.folder.input.hidden_size
        feed_forward = next(
            (getattr(model.config, k) for k in ("intermediate_size", "hidden_dim", "d_ff") if hasattr(model.config, k)),
            4 * hidden,
        )
        element = torch.finfo(model.dtype).bits // 8
        # Live activations per token: hidden states, Q/K/V, attention output, FFN in and out,
        # with a factor of 4 for the allocator's slack and the other layer in flight.
        return free, 4 * element * (6 * hidden + 2 * feed_forward)

    def encode(self, texts: list[str] | pa.Array, token_budget: int | None = None) -> Encoded:
        """Embed `texts`; batches are cut by padded tokens (`token_budget`), not rows.

        On CUDA the next batch is padded on the CPU while the GPU runs the last one,
        batches are also cut to keep padding under CUDA_MAX_PADDING, and a batch that
        runs out of GPU memory is split, with the budget halved for the rest of this
        encoder's life, rather than failing. Freed heap goes back to the OS now and then
        (`encoder.heap`), so a long run does not grow.
        """
        return self.launch(self.tokenizer.encode(texts), token_budget).collect()

    def launch(
        self,
        tokenized: Tokenized,
        token_budget: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        sharers: int = 1,
    ) -> Launched:
        """`encode` after tokenising (a caller may tokenise the next texts meanwhile): `tokenized`'s batches
        queued on the device (on CPU, run), whose vectors `Launched.collect` gives.

        `on_batch` is told the rows each batch completes once it has run (on CUDA, once queued), so
        that progress moves within a chunk: on CPU a 4,096-row chunk takes a minute. Rows are credited
        in proportion to their tokens, what a batch costs, and add up to the chunk's: batches run
        narrowest first, so counted as rows the first ones carried most of a chunk's rows, and the
        progress line put the time left at a third to an eighth of the truth. `sharers`: the threads
        running batches on this encoder at once, which share the default budget.
        """
        token_budget = min(
            token_budget or self.default_token_budget(sharers), self._budget_cap or np.iinfo(np.int64).max
        )
        lengths = tokenized.lengths
        widths = padded_widths(lengths, self.max_seq_length)
        max_padding = CUDA_MAX_PADDING if self.device.type == "cuda" else None
        done: list[tuple[np.ndarray, torch.Tensor]] = []
        queue = deque(token_budget_batches(widths, token_budget, lengths, max_padding))
        retried: set[int] = set()  # single rows that ran out of memory once
        all_tokens, tokens_run, credited = int(widths.sum()), 0, 0  # rows credited by their tokens (on_batch)
        while queue:
            rows = queue.popleft()
            try:
                features = self.input_module.collate(tokenized, rows, int(widths[rows[-1]]), self.tokenizer.pad_id)
                done.append((rows, self._forward(features)))
                if on_batch is not None:
                    tokens_run += int(widths[rows].sum())
                    # Texts without a token (a static model's, of characters it drops) count as rows.
                    due = len(widths) * tokens_run // all_tokens if all_tokens else len(widths)
                    on_batch(due - credited)
                    credited = due
                self.heap_trimmer.maybe_trim()
                continue
            except torch.OutOfMemoryError:
                if len(rows) == 1 and int(rows[0]) in retried:
                    raise
            # Out of the handler: its traceback held the failed batch's activations, which are free now.
            torch.cuda.empty_cache()
            if len(rows) == 1:  # once more, with the cache emptied
                retried.add(int(rows[0]))
                queue.appendleft(rows)
            else:
                token_budget = max(1, token_budget // 2)
                self._budget_cap = min(token_budget, self._budget_cap or token_budget)
                remaining = np.concatenate([rows, *queue])
                batches = token_budget_batches(widths[remaining], token_budget, lengths[remaining], max_padding)
                queue = deque(remaining[b] for b in batches)
                _LOG.warning("out of GPU memory on %d rows; token budget lowered to %d", len(rows), token_budget)
        copied = None
        if self.device.type == "cuda":  # the copies back to the host are asynchronous
            # Blocking: a thread waiting for it sleeps instead of spinning on a core that the tokenizer
            # and the other harness threads of a GPU worker need.
            copied = torch.cuda.Event(blocking=True)
            copied.record(torch.cuda.current_stream(self.device))
        return Launched(done, lengths, widths, tokenized.truncated, self.dim, self.dtype, copied)

    @torch.inference_mode()
    def _forward(self, features: Features) -> torch.Tensor:
        """Sentence vectors on the host (on CUDA, still being copied until synchronised)."""
        features = self._to_device(features)
        features.prompt_length = self.tokenizer.prompt_length
        features = self.input_module(features)
        for module in self.modules:
            features = module(features)
        vectors = features.sentence_embedding.float()
        if self.dim < vectors.shape[1]:  # Matryoshka: the first dimensions, normalised again
            vectors = vectors[:, : self.dim]
            if self.folder.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.to("cpu", non_blocking=True)

    def _to_device(self, features: Features) -> Features:
        """On CUDA, pinned memory lets the copies to the GPU run asynchronously."""
        if self.device.type != "cuda":
            return features
        for name in ("input_ids", "attention_mask", "token_type_ids", "offsets"):
            tensor = getattr(features, name)
            if tensor is not None:
                setattr(features, name, tensor.pin_memory().to(self.device, non_blocking=True))
        return features
