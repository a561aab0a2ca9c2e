"""The pooled encoder against sentence-transformers, the reference it must equal (CPU, float32)."""

from __future__ import annotations

import json
import platform
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from encoder import ModelFolderError, PooledEncoder, cpu_flags, onednn, read_model_folder
from encoder.batching import padded_widths, token_budget_batches
from encoder.devices import resolve_dtype
from encoder.heap import HeapTrimmer
from encoder.modules.pooling import pool
from encoder.onednn import OneDnnLinear
from encoder.pooled_encoder import (
    CPU_TOKEN_BUDGET,
    CUDA_MAX_PADDING,
    MAX_CPU_TOKEN_BUDGET,
    MAX_CUDA_TOKEN_BUDGET,
    NonFiniteVectors,
)
from samples.knowledge_base import make_rows
from samples.model_families import STATIC, save_family
from tests.conftest import TINY_POOLINGS, record, run_cli, save_tiny_model, write_parquet
from transforms.embed import CUDA_CHUNK_ROWS

MIXED_TEXTS = [
    *make_rows(120, seed=7).column("text").to_pylist(),
    "hi",
    "東京は日本の首都です。",
    "مرحبا بالعالم، هذا نص من اليمين إلى اليسار",
    "emoji 🚀🔥👩‍💻 in a sentence",
    "a NUL\x00character inside",
    "  leading and trailing spaces  ",
    "word " * 600,  # far past 256 tokens: truncated
]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def test_default_model_equals_sentence_transformers(model_path):
    ours = PooledEncoder(read_model_folder(model_path), device="cpu").encode(MIXED_TEXTS, token_budget=4096)
    st = SentenceTransformer(model_path, device="cpu")
    reference = st.encode(MIXED_TEXTS, normalize_embeddings=True)
    assert ours.embeddings.shape == (len(MIXED_TEXTS), 384)
    assert ours.embeddings.dtype == np.float32
    assert min_cosine(ours.embeddings, reference) >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours.embeddings, axis=1), 1.0, atol=1e-5)
    untruncated = st.tokenizer(MIXED_TEXTS, verbose=False)["input_ids"]
    assert ours.truncated.tolist() == [len(ids) > 256 for ids in untruncated]
    assert ours.truncated[-1] and ours.truncated.sum() >= 2


@pytest.mark.parametrize("pooling", sorted(TINY_POOLINGS))
def test_each_pooling_mode_equals_sentence_transformers(tiny_models, pooling):
    path = tiny_models[pooling]
    ours = PooledEncoder(read_model_folder(path), device="cpu").encode(MIXED_TEXTS, token_budget=512)
    reference = SentenceTransformer(str(path), device="cpu").encode(MIXED_TEXTS)
    assert ours.embeddings.shape == reference.shape
    assert min_cosine(ours.embeddings, reference) >= 0.9999


def test_prompt_excluded_from_pooling_equals_sentence_transformers(tmp_path):
    path = save_tiny_model(
        tmp_path / "prompted",
        {"pooling_mode_mean_tokens": True, "include_prompt": False},
        normalize=False,
        prompts={"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "passage"},
    )
    folder = read_model_folder(path)
    reference = SentenceTransformer(str(path), device="cpu")
    for name in (None, "query"):
        ours = PooledEncoder(folder, device="cpu", prompt_name=name).encode(MIXED_TEXTS[:40])
        expected = reference.encode(MIXED_TEXTS[:40], prompt_name=name)
        assert min_cosine(ours.embeddings, expected) >= 0.9999
    with pytest.raises(ModelFolderError, match="no prompt named 'doc'; prompts defined: passage, query"):
        folder.prompt("doc")


@pytest.mark.skipif(not onednn.available(), reason="oneDNN kernels are used on x86-64 CPUs only")
def test_cpu_encoder_runs_every_linear_layer_through_onednn(model_path):
    model = PooledEncoder(read_model_folder(model_path), device="cpu", cpu_kernels="onednn").input_module.model
    linears = [m for m in model.modules() if isinstance(m, OneDnnLinear)]
    # 6 layers x (query, key, value, attention output, FFN in, FFN out); the unread pooler head is gone
    assert len(linears) == 6 * 6
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(m._post_op == "gelu" for m in linears) == 6
    assert not any(type(m).__name__ == "GELUActivation" for m in model.modules())


@pytest.mark.skipif(not onednn.available(), reason="oneDNN kernels are used on x86-64 CPUs only")
@pytest.mark.parametrize("hidden_act", ["gelu_new", "relu"])
def test_other_activations_stay_unfused_and_equal_sentence_transformers(tmp_path, hidden_act):
    path = save_tiny_model(tmp_path / hidden_act, TINY_POOLINGS["mean"], hidden_act=hidden_act)
    encoder = PooledEncoder(read_model_folder(path), device="cpu", cpu_kernels="onednn")
    assert not any(isinstance(m, OneDnnLinear) and m._post_op != "none" for m in encoder.input_module.model.modules())
    ours = encoder.encode(MIXED_TEXTS, token_budget=512)
    reference = SentenceTransformer(str(path), device="cpu").encode(MIXED_TEXTS)
    assert min_cosine(ours.embeddings, reference) >= 0.9999


def test_cpu_budget_grows_for_models_smaller_than_minilm(model_path, tiny_models):
    """MiniLM keeps the budget measured on it; a 2-layer model of hidden size 32 (17,408 linear
    weights, 618 times fewer) gets the largest, with either kernels (oneDNN repacks the weights)."""
    assert PooledEncoder(read_model_folder(model_path), device="cpu").default_token_budget() == CPU_TOKEN_BUDGET == 2048
    for kernels in ("torch", "onednn"):
        tiny = PooledEncoder(read_model_folder(tiny_models["mean"]), device="cpu", cpu_kernels=kernels)
        assert tiny.default_token_budget() == MAX_CPU_TOKEN_BUDGET == 8192


def test_batches_cover_every_row_once_within_the_budget():
    lengths = np.array([5, 300, 12, 12, 7, 90, 1, 64, 64, 33])
    batches = token_budget_batches(lengths, token_budget=128)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for rows in batches:
        assert len(rows) == 1 or len(rows) * lengths[rows].max() <= 128
    # Sorted by length: padding stays small.
    assert [lengths[rows].tolist() for rows in batches] == [[1, 5, 7, 12, 12], [33, 64], [64], [90], [300]]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("budget", "max_padding"), [(64, None), (2048, None), (4096, 1.05), (512, 1.2)])
def test_batches_are_the_greedy_cut_of_the_rows_by_width(seed, budget, max_padding):
    """Each batch takes rows in ascending width while they fit, and stops at the first that does
    not: over the budget, or (with max_padding) too padded once the batch holds its floor."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 300, size=int(rng.integers(1, 3000)))
    lengths[: 70 * (seed == 0)] = 0  # a static model's empty texts: no tokens at all
    widths = padded_widths(lengths, 256)
    batches = token_budget_batches(widths, budget, lengths, max_padding)
    assert np.concatenate(batches).tolist() == np.argsort(widths, kind="stable").tolist()

    def joins(batch: list[int], row: int) -> bool:
        padded = (len(batch) + 1) * widths[row]
        if padded > budget:
            return False
        held = len(batch) * widths[batch[-1]]
        real = lengths[batch].sum() + lengths[row]
        return max_padding is None or held < budget / 8 or padded <= max_padding * real

    for number, batch in enumerate(batches):
        rows = batch.tolist()
        assert all(joins(rows[:k], rows[k]) for k in range(1, len(rows)))
        if number + 1 < len(batches):
            assert not joins(rows, int(batches[number + 1][0]))


def test_gpu_budget_batches_keep_padding_within_five_percent_on_a_real_knowledge_base(model_path):
    """One chunk of the rows a CUDA worker gathers, cut at the largest GPU budget."""
    tokenizer = PooledEncoder(read_model_folder(model_path), device="cpu").tokenizer
    lengths = tokenizer.encode(make_rows(CUDA_CHUNK_ROWS).column("text")).lengths
    widths = padded_widths(lengths, tokenizer.max_seq_length)

    def padding(batches) -> float:
        return sum(len(rows) * widths[rows].max() for rows in batches) / lengths.sum()

    budget = MAX_CUDA_TOKEN_BUDGET
    assert padding(token_budget_batches(widths, budget)) > 1.1  # a wide range of lengths per batch
    capped = token_budget_batches(widths, budget, lengths, max_padding=CUDA_MAX_PADDING)
    assert sorted(np.concatenate(capped).tolist()) == list(range(len(lengths)))
    assert padding(capped) <= CUDA_MAX_PADDING
    assert all(len(rows) * widths[rows].max() <= budget for rows in capped)
    assert len(capped) <= 8 / (1 - 1 / CUDA_MAX_PADDING) * lengths.sum() / budget  # still large batches


def test_batches_are_padded_to_a_multiple_of_four_tokens_but_not_past_max_seq_length(model_path):
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu", max_seq_length=10)
    short, long = "hello there world", "a passage that runs well past ten tokens of text, for sure"
    encoded = encoder.encode([short, long], token_budget=10)
    # [CLS] hello there world [SEP]: 5 tokens padded to 8; the long one cut at 10 and left at 10.
    assert (encoded.tokens, encoded.padded_tokens) == (5 + 10, 8 + 10)
    assert encoded.truncated.tolist() == [False, True]


def test_pickle_only_weights_are_refused(tmp_path, model_path):
    folder = tmp_path / "pickled"
    shutil.copytree(model_path, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelFolderError, match=r"only pickle weights \(pytorch_model.bin\) found; they are refused"):
        read_model_folder(folder)


def test_weights_lacking_a_tensor_are_refused_and_lacking_only_the_pooler_head_are_not(tmp_path):
    """transformers fills a tensor the weights lack at random, saying so only in its load report: a
    model nobody trained, another in every worker process. The pooler head, which sentence-transformers
    never runs, is often left out of checkpoints."""
    model = save_tiny_model(tmp_path / "model", TINY_POOLINGS["mean"])
    texts = ["Reset the VPN token", "Billing API returns 502"]
    expected = PooledEncoder(read_model_folder(model), device="cpu").encode(texts).embeddings
    weights = load_file(model / "model.safetensors")
    without_pooler = {name: tensor for name, tensor in weights.items() if not name.startswith("pooler.")}
    assert len(without_pooler) == len(weights) - 2
    save_file(without_pooler, model / "model.safetensors", metadata={"format": "pt"})
    got = PooledEncoder(read_model_folder(model), device="cpu").encode(texts).embeddings
    np.testing.assert_array_equal(got, expected)
    del without_pooler["encoder.layer.0.attention.self.query.weight"]
    save_file(without_pooler, model / "model.safetensors", metadata={"format": "pt"})
    message = (
        f"{model}: its weights lack 1 of the model's tensors (encoder.layer.0.attention.self.query.weight); "
        "transformers would fill them at random"
    )
    with pytest.raises(ModelFolderError) as refused:
        PooledEncoder(read_model_folder(model), device="cpu")
    assert str(refused.value) == message
    shard = write_parquet(tmp_path / "in.parquet", id=["a", "b"], text=texts)
    for plan_only in ([], ["--plan_only"]):  # the plan loads the model too: a GPU image's build step plans a job
        result = run_cli("--input", str(shard), "--output", str(tmp_path / "out"), "--model", str(model), *plan_only)
        assert (result.returncode, result.stderr.splitlines()[-1], result.stdout) == (1, f"error: {message}", "")
        assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"intermediate_size": 80},
            "{model}: 6 of its weights are not of the sizes its config gives (encoder.layer.0.intermediate.dense.bias "
            "is [64] in the weights, [80] by the config); transformers would fill them at random",
        ),
        (
            {"model_type": "bert9000"},
            "{model}: transformers cannot load it: The checkpoint you are trying to load has model type `bert9000` "
            "but Transformers does not recognize this architecture.",
        ),
    ],
    ids=["sizes-other-than-the-configs", "unknown-model-type"],
)
def test_a_config_its_weights_do_not_fit_is_refused_naming_the_folder(tmp_path, config, message):
    """Found when the workers load the model: a traceback and "the job failed" before; other sizes
    were an error only because transformers refuses them unless told to fill them at random."""
    model = save_tiny_model(tmp_path / "model", TINY_POOLINGS["mean"])
    settings = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**settings, **config}))
    with pytest.raises(ModelFolderError) as refused:
        PooledEncoder(read_model_folder(model), device="cpu")
    assert str(refused.value).startswith(message.format(model=model))
    shard = write_parquet(tmp_path / "in.parquet", id=["a"], text=["Reset the VPN token"])
    result = run_cli("--input", str(shard), "--output", str(tmp_path / "out"), "--model", str(model), "--plan_only")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines()[-1].startswith(f"error: {message.format(model=model)}")


def test_folder_without_modules_json_is_refused(tmp_path):
    with pytest.raises(ModelFolderError, match="not a sentence-transformers model folder"):
        read_model_folder(tmp_path)


@pytest.mark.parametrize(
    ("module_type", "message"),
    [
        (
            "sentence_transformers.models.CNN",
            "module type 'sentence_transformers.models.CNN' is not supported; "
            "supported: Transformer, StaticEmbedding, Pooling, Dense, LayerNorm, Normalize, Dropout "
            "from sentence_transformers",
        ),
        ("custom_st.Transformer", "its code would come from custom_st.py in the folder"),
    ],
)
def test_unsupported_module_is_refused_naming_its_type(tmp_path, model_path, module_type, message):
    folder = tmp_path / "other"
    shutil.copytree(model_path, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Other", "type": module_type})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelFolderError, match=re.escape(message)):
        read_model_folder(folder)


def test_remote_code_model_is_refused_naming_the_file_that_would_run(tmp_path, model_path):
    folder = tmp_path / "remote"
    shutil.copytree(model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=r"custom code the model ships in modeling_hf_nomic_bert\.py"):
        read_model_folder(folder)


def test_max_seq_length_override(model_path):
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu", max_seq_length=8)
    result = encoder.encode(["one two three four five six seven eight nine ten", "short"])
    assert result.truncated.tolist() == [True, False]
    assert result.tokens == 8 + 3
    with pytest.raises(ModelFolderError, match="max_seq_length must be between 1 and 512"):
        read_model_folder(model_path).seq_length(1000)


def test_rows_are_credited_to_progress_by_their_tokens_so_it_moves_at_the_chunks_mean_rate(model_path):
    """A batch costs about its tokens, and batches run narrowest first: counted as rows, a chunk's first
    batches carried most of its rows, and the progress line put the time left at a third to an eighth of
    the truth. Each batch credits the chunk's rows in proportion to the tokens run so far."""
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu")
    tokenized = encoder.tokenizer.encode(MIXED_TEXTS)
    reported = []  # rows credited by each batch, as it has run
    encoder.launch(tokenized, 1024, reported.append).collect()
    widths = padded_widths(tokenized.lengths, encoder.max_seq_length)
    batches = token_budget_batches(widths, 1024, tokenized.lengths)
    assert len(batches) >= 4 and len(reported) == len(batches)
    tokens_run = np.cumsum([widths[b].sum() for b in batches])
    assert np.cumsum(reported).tolist() == (len(MIXED_TEXTS) * tokens_run // widths.sum()).tolist()
    assert sum(reported) == len(MIXED_TEXTS)
    assert reported[0] < len(batches[0]) // 2  # the narrowest rows: many, few tokens


def test_a_chunk_of_texts_without_tokens_credits_its_rows(tmp_path):
    """A static model's texts of characters its tokenizer drops have no tokens: crediting rows by their
    tokens divided by zero, and the run failed."""
    encoder = PooledEncoder(read_model_folder(save_family(STATIC, tmp_path / "static")), device="cpu")
    tokenized = encoder.tokenizer.encode(["\u200b", "\x01"])
    assert tokenized.lengths.tolist() == [0, 0]
    reported = []
    vectors = encoder.launch(tokenized, None, reported.append).collect().embeddings
    assert sum(reported) == 2 and not vectors.any()  # the zero vector, as sentence-transformers gives


def test_out_of_memory_splits_batches_and_keeps_every_row(model_path, monkeypatch):
    """A card that holds 300 padded tokens: batches are split and the budget lowered, nothing fails."""
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu")
    expected = encoder.encode(MIXED_TEXTS, token_budget=2048)
    forward = encoder.input_module.model.forward
    ran, refused = [], []

    def small_card(input_ids, attention_mask, **types):
        if input_ids.numel() > 300:
            refused.append(input_ids.numel())
            raise torch.OutOfMemoryError("CUDA out of memory (fault injected by the test)")
        ran.append(input_ids.numel())
        return forward(input_ids=input_ids, attention_mask=attention_mask, **types)

    monkeypatch.setattr(encoder.input_module.model, "forward", small_card)
    reported = []  # rows of each batch, once it has run: a split batch counts once, after its split
    result = encoder.launch(encoder.tokenizer.encode(MIXED_TEXTS), 2048, reported.append).collect()
    assert refused and max(ran) <= 300
    assert len(reported) == len(ran) and sum(reported) == len(MIXED_TEXTS)
    split = len(refused)
    refused.clear()
    encoder.encode(MIXED_TEXTS, token_budget=2048)
    assert not refused  # the lowered budget lasts for the worker, not one call
    assert min_cosine(result.embeddings, expected.embeddings) >= 0.99999
    assert result.tokens == expected.tokens
    record(
        "fault",
        "CUDA out-of-memory injected in the encoder",
        f"{split} batches split; same vectors; budget stays lowered",
    )


def test_a_single_row_out_of_memory_is_retried_once_then_fails(model_path, monkeypatch):
    """Once the allocator's cache is emptied one row may fit (it failed beside other work); if it
    still does not, the bundle fails rather than looping."""
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu")
    expected = encoder.encode(["one row"]).embeddings
    forward = encoder.input_module.model.forward
    calls = []

    def out_of_memory_first(**inputs):
        calls.append(inputs["input_ids"].shape[0])
        if len(calls) == 1 or failing:
            raise torch.OutOfMemoryError("CUDA out of memory (fault injected by the test)")
        return forward(**inputs)

    monkeypatch.setattr(encoder.input_module.model, "forward", out_of_memory_first)
    failing = False
    np.testing.assert_array_equal(encoder.encode(["one row"]).embeddings, expected)
    assert calls == [1, 1]
    calls.clear()
    failing = True
    with pytest.raises(torch.OutOfMemoryError):
        encoder.encode(["one row"])
    assert calls == [1, 1]


def test_heap_is_trimmed_at_most_once_per_interval():
    assert platform.libc_ver()[0] == "glibc"  # the CI and worker images are glibc Linux
    assert HeapTrimmer(0.0).maybe_trim() is True
    slow = HeapTrimmer(3600.0)
    assert [slow.maybe_trim(), slow.maybe_trim()] == [False, False]


def test_bfloat16_on_a_cpu_without_onednn_bf16_kernels_runs_on_plain_torch(monkeypatch, model_path):
    """An AVX2-only host: the oneDNN weight reorder would fail at load, so no linear layer is swapped."""
    monkeypatch.setattr(onednn, "bf16_kernels", lambda: False)
    folder = read_model_folder(model_path)
    encoder = PooledEncoder(folder, device="cpu", dtype="bfloat16")
    assert not any(isinstance(m, OneDnnLinear) for m in encoder.input_module.modules())
    texts = ["How do I rotate the API keys?", "数据库连接池耗尽 🚀"]
    ours = encoder.encode(texts).embeddings
    reference = SentenceTransformer(model_path, device="cpu").encode(texts, normalize_embeddings=True)
    assert (ours * reference).sum(axis=1).min() >= 0.99


@pytest.mark.parametrize("kernels", ["torch", "onednn"])
def test_bfloat16_on_cpu_stays_within_the_stated_fidelity_of_sentence_transformers_float32(model_path, kernels):
    """The fidelity the README states for --dtype bfloat16 on CPU: cosine ≥ 0.999 to the float32
    reference, with plain torch's kernels and with oneDNN's (on AMX where the CPU has it)."""
    if kernels == "onednn" and not onednn.available(torch.bfloat16):
        pytest.skip("this CPU has no oneDNN bfloat16 kernels")
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu", dtype="bfloat16", cpu_kernels=kernels)
    assert (encoder.cpu_kernels, encoder.input_module.model.dtype) == (kernels, torch.bfloat16)
    ours = encoder.encode(MIXED_TEXTS).embeddings
    reference = SentenceTransformer(model_path, device="cpu").encode(MIXED_TEXTS, normalize_embeddings=True)
    assert ours.dtype == np.float32
    assert min_cosine(ours, reference) >= 0.999


@pytest.mark.skipif(not onednn.available(), reason="oneDNN kernels are used on x86-64 CPUs only")
@pytest.mark.parametrize(
    ("vendor", "flags", "chosen"),
    [
        ("AuthenticAMD", "fpu avx2 avx512f avx512bw avx512vl avx512dq", "onednn"),
        ("AuthenticAMD", "fpu avx2 fma", "torch"),
        ("GenuineIntel", "fpu avx2 avx512f avx512bw avx512vl avx512dq", "onednn"),
        ("GenuineIntel", "fpu avx2 fma", "torch"),
    ],
)
def test_auto_cpu_kernels_take_onednn_only_with_avx512(monkeypatch, tmp_path, model_path, vendor, flags, chosen):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_flags.cpu_features(cpuinfo) == (vendor, set(flags.split()))
    monkeypatch.setattr(cpu_flags, "cpu_features", lambda: (vendor, set(flags.split())))
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu")
    assert encoder.cpu_kernels == chosen
    swapped = any(isinstance(m, OneDnnLinear) for m in encoder.input_module.modules())
    assert swapped == (chosen == "onednn")


@pytest.mark.skipif(not onednn.available(), reason="oneDNN kernels are used on x86-64 CPUs only")
def test_speedup_is_measured_on_the_fused_feed_forward_layer(model_path):
    encoder = PooledEncoder(read_model_folder(model_path), device="cpu", cpu_kernels="torch")
    linear, gelu = onednn._probe_layer(encoder.input_module)
    assert (linear.in_features, linear.out_features, type(gelu).__name__) == (384, 1536, "GELUActivation")
    assert onednn.measured_speedup(encoder.input_module) > 0


@pytest.mark.parametrize(
    ("dtype", "device", "resolved"),
    [
        ("auto", "cpu", "float32"),
        ("auto", "cuda", "bfloat16"),
        ("auto", "cuda:1", "bfloat16"),
        ("float16", "cuda", "float16"),
    ],
)
def test_dtype_auto_is_bfloat16_on_cuda_and_float32_on_cpu(dtype, device, resolved):
    assert resolve_dtype(dtype, device) == resolved
    if not torch.cuda.is_available():
        assert resolve_dtype("auto", "auto") == "float32"  # this machine: no GPU


@pytest.mark.parametrize("mode", ["cls", "lasttoken", "max", "mean", "mean_sqrt_len_tokens", "weightedmean"])
def test_pooled_vectors_are_float32_from_half_precision_token_vectors(mode):
    """Pooling keeps float32: in float16 a sum over 512 tokens of 10,000 divided by sqrt(512) is
    226,274, past float16's 65,504, and normalising infinity gives NaN."""
    tokens = torch.full((2, 512, 4), 10_000.0, dtype=torch.float16)
    mask = torch.ones(2, 512, dtype=torch.int64)
    mask[1, 100:] = 0
    pooled = pool(tokens, mask, (mode,))
    expected = pool(tokens.float(), mask, (mode,))
    assert pooled.dtype == torch.float32 and torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def _with_infinite_token(model, word: str) -> int:
    """Make the model's embedding of `word` infinite, as a model overflowing in float16 would be."""
    token = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids(word)
    weights = load_file(model / "model.safetensors")
    weights["embeddings.word_embeddings.weight"][token] = float("inf")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return token


def test_vectors_that_are_not_finite_fail_the_job_naming_their_ids(tmp_path):
    model = save_tiny_model(tmp_path / "model", TINY_POOLINGS["mean"])
    _with_infinite_token(model, "billing")
    texts = ["Reset the VPN token", "Billing API returns 502", "ok", "billing again"]
    with pytest.raises(
        NonFiniteVectors, match=r"^2 vectors are not finite \(texts \[1, 3\] first\): the model overflowed in float32$"
    ):
        PooledEncoder(read_model_folder(model), device="cpu").encode(texts)
    shard = write_parquet(tmp_path / "in.parquet", id=["a", "b", "c", "d"], text=texts)
    result = run_cli("--input", str(shard), "--output", str(tmp_path / "out"), "--model", str(model))
    assert result.returncode == 1, result.stderr
    assert result.stderr.endswith(
        "\nerror: 2 vectors are not finite (ids ['b', 'd'] first): the model overflowed in float32\n"
    )
    assert "Traceback" not in result.stderr  # the job's own error, in one line: Beam's log of it is left out
    assert not (tmp_path / "out" / "manifest.json").exists()
