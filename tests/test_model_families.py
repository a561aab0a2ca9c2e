"""Every supported family and module, encoded by the job's encoder and by sentence-transformers.

Each family is a tiny random model of its architecture built offline (samples.model_families)
and saved as a sentence-transformers folder; random weights make any difference in the
computation show as a different vector.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from torch.utils._python_dispatch import TorchDispatchMode

from encoder import ModelFolderError, PooledEncoder, read_model_folder
from encoder.batching import padded_widths
from encoder.modules import build_input
from encoder.tokens import WHOLE_PIECE_CHARS, TextTokenizer
from pipeline.plan import encoder_fixes
from samples.model_families import NAMES, STATIC, save_family
from tests.conftest import embedding_rows, read_manifest, run_cli, run_clis, save_tiny_model, write_parquet

TEXTS = [
    "How do I rotate the API keys of a service account?",
    "数据库连接池在高并发下耗尽，如何排查？",
    "Deploy failed 🚀🔥 after the upgrade — rollback worked 👍",
    "short",
    "A long page. " + " ".join(f"Paragraph {i} explains step {i} of the migration in some detail." for i in range(60)),
    "Ünïcödé, ñ, and 한국어 텍스트 mixed with English words and numbers 12345.",
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    return {name: save_family(name, root / name) for name in NAMES}


def _reference(folder, texts: list[str] = TEXTS, **kwargs) -> np.ndarray:
    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, convert_to_numpy=True, **kwargs)


@pytest.mark.parametrize("family", NAMES)
def test_family_gives_sentence_transformers_vectors_in_float32(folders, family):
    folder = read_model_folder(folders[family])
    ours = PooledEncoder(folder, device="cpu").encode(TEXTS).embeddings
    theirs = _reference(folders[family], normalize_embeddings=folder.normalize)
    assert ours.shape == theirs.shape
    assert _cosines(ours, theirs).min() >= 0.9999
    # Lengths too: a model trained for the dot product ranks by them.
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1), rtol=1e-4)
    unit = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    assert (unit @ unit.T)[~np.eye(len(TEXTS), dtype=bool)].max() < 0.999  # texts differ: a fault would show
    if folder.normalize:
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("family", NAMES)
def test_family_in_bfloat16_stays_within_cosine_0_99_of_float32(folders, family):
    folder = read_model_folder(folders[family])
    ours = PooledEncoder(folder, device="cpu", dtype="bfloat16").encode(TEXTS).embeddings
    theirs = _reference(folders[family], normalize_embeddings=folder.normalize)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert _cosines(ours, theirs).min() >= 0.99


class _DeviceReads(TorchDispatchMode):
    """Counts the operators that copy a tensor's value to the host (`bool(t)`, `t.item()`, `t.nonzero()` ...):
    on CUDA each waits for every kernel queued before it."""

    READS = frozenset({"aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::equal"})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func._schema.name in self.READS
        return func(*args, **(kwargs or {}))


# XLM's and FlauBERT's code reads the rows' longest length itself (`lengths.max().item()`).
@pytest.mark.parametrize("family", [name for name in NAMES if name not in (STATIC, "xlm", "flaubert")])
def test_the_transformer_built_for_cuda_reads_no_device_value_and_gives_the_same_token_vectors(folders, family):
    """transformers read the padding mask (`padding_mask.all()`) to decide whether to build an attention
    mask: on CUDA the host then waited for the GPU once per batch (encoder.attention). Counted here on CPU,
    with the module built as for CUDA, on a batch with padding."""
    folder = read_model_folder(folders[family])
    tokenizer = TextTokenizer(folder)
    tokenized = tokenizer.encode(TEXTS)
    width = int(padded_widths(tokenized.lengths, tokenizer.max_seq_length).max())
    vectors, reads = {}, {}
    for unread_masks in (False, True):
        module = build_input(folder.input, torch.float32, unread_masks=unread_masks)
        module.token_types = tokenizer.token_types
        features = module.collate(tokenized, np.arange(len(TEXTS)), width, tokenizer.pad_id)
        with torch.inference_mode(), _DeviceReads() as counted:
            vectors[unread_masks] = module(features).token_embeddings
        reads[unread_masks] = counted.count
    assert reads[True] == 0
    assert torch.equal(vectors[True], vectors[False])
    if family in ("qwen3", "modernbert"):  # as built for CPU they read it, where it costs nothing
        assert reads[False] > 0


@pytest.mark.parametrize("family", ["bert", "roberta", "xlm-roberta", "mpnet"])
def test_the_pooler_head_whose_output_nothing_reads_is_not_run(folders, family):
    """These families' weights hold a pooler head (a linear layer and a tanh on the first token), which
    transformers runs on every batch; sentence-transformers never reads its output."""
    folder = read_model_folder(folders[family])
    assert any(name.startswith("pooler.") for name in load_file(folder.input.path / "model.safetensors"))
    assert build_input(folder.input, torch.float32).model.pooler is None


@pytest.mark.parametrize("family", NAMES)
def test_the_modules_after_the_input_module_read_no_device_value(folders, family):
    """Pooling (every mode), Dense, LayerNorm and Normalize run on every batch too: on CUDA a read
    there (`if mask.any()`, say) would make the host wait for the GPU as the padding mask's did."""
    encoder = PooledEncoder(read_model_folder(folders[family]), device="cpu")
    tokenized = encoder.tokenizer.encode(TEXTS)
    width = int(padded_widths(tokenized.lengths, encoder.max_seq_length).max())
    features = encoder.input_module.collate(tokenized, np.arange(len(TEXTS)), width, encoder.tokenizer.pad_id)
    features.prompt_length = encoder.tokenizer.prompt_length
    with torch.inference_mode():
        features = encoder.input_module(features)
        with _DeviceReads() as counted:
            for module in encoder.modules:
                features = module(features)
    assert counted.count == 0
    assert features.sentence_embedding.shape[0] == len(TEXTS)


@pytest.mark.parametrize("family", ["bert", "bert-dot", "bert-dropout"])
def test_the_similarity_is_the_one_sentence_transformers_reads(folders, family):
    expected = SentenceTransformer(str(folders[family]), device="cpu").similarity_fn_name
    assert read_model_folder(folders[family]).similarity == expected == ("dot" if family == "bert-dot" else "cosine")


@pytest.mark.parametrize("saved", ["maxsim", None])
def test_a_similarity_sentence_transformers_does_not_take_for_this_model_is_cosine(folders, tmp_path, saved):
    folder = tmp_path / "model"
    shutil.copytree(folders["bert"], folder)
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config["similarity_fn_name"] = saved
    config_file.write_text(json.dumps(config))
    assert SentenceTransformer(str(folder), device="cpu").similarity_fn_name == "cosine"
    assert read_model_folder(folder).similarity == "cosine"


def test_truncate_dim_keeps_the_first_dimensions_then_normalises(folders):
    folder = read_model_folder(folders["bert"])
    ours = PooledEncoder(folder, device="cpu", truncate_dim=8).encode(TEXTS).embeddings
    theirs = _reference(folders["bert"], truncate_dim=8, normalize_embeddings=True)
    assert ours.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with pytest.raises(ValueError, match=f"truncate_dim {folder.dim + 1} must be between 1 and"):
        PooledEncoder(folder, device="cpu", truncate_dim=folder.dim + 1)


def test_folder_truncate_dim_is_the_default(folders):
    folder = read_model_folder(folders["bert-matryoshka"])
    assert folder.truncate_dim is not None and folder.truncate_dim < folder.dim
    assert PooledEncoder(folder, device="cpu").encode(TEXTS).embeddings.shape == (len(TEXTS), folder.truncate_dim)


@pytest.mark.parametrize("family", ["gemma3-text", "qwen3"])
def test_free_prompt_and_named_prompt_match_sentence_transformers(folders, family):
    folder = read_model_folder(folders[family])
    free = PooledEncoder(folder, device="cpu", prompt="passage: ").encode(TEXTS).embeddings
    assert _cosines(free, _reference(folders[family], prompt="passage: ")).min() >= 0.9999
    if folder.prompts:
        name = sorted(folder.prompts)[0]
        named = PooledEncoder(folder, device="cpu", prompt_name=name).encode(TEXTS).embeddings
        assert _cosines(named, _reference(folders[family], prompt_name=name)).min() >= 0.9999
        assert _cosines(named, free).min() < 0.9999  # the prompt reached the model


def test_decoder_families_pool_the_last_token_whatever_their_batch(folders):
    folder = read_model_folder(folders["qwen3"])
    assert folder.pooling_modes == ("lasttoken",)
    encoder = PooledEncoder(folder, device="cpu")
    alone = encoder.encode(TEXTS[3:4]).embeddings
    # in a batch with longer texts, "short" is padded; its vector must not change
    together = encoder.encode(TEXTS, token_budget=1 << 20).embeddings[3:4]
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("where", ["tokenizer_config.json", "tokenizer.json", "tokenizer class"])
def test_a_tokenizer_padding_on_the_left_gives_each_text_its_own_vector_whatever_its_batch(folders, tmp_path, where):
    """A BERT (absolute positions) whose tokenizer pads on the left, as tokenizer_config.json, tokenizer.json's
    padding or the tokenizer's class (Gemma's, Llama's) says: padded so, every token of a short text was read
    at another position, and its vector changed with the longest text of its batch (sentence-transformers'
    too: cosine 0.58 between its vectors in a batch and alone). Each text gets the vector it gets alone,
    as a query embedded at search time does: sentence-transformers' with batch_size=1."""
    folder = shutil.copytree(folders["bert"], tmp_path / "bert")
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    backend = json.loads((folder / "tokenizer.json").read_text())
    if where == "tokenizer_config.json":
        settings["padding_side"] = "left"
    elif where == "tokenizer.json":
        settings.pop("padding_side", None)
        backend["padding"] = {**(backend["padding"] or {}), "direction": "Left"}
    else:
        settings.pop("padding_side", None)
        backend["padding"], settings["tokenizer_class"] = None, "GemmaTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "tokenizer.json").write_text(json.dumps(backend))
    reference = SentenceTransformer(str(folder), device="cpu")
    assert reference.tokenizer.padding_side == "left"
    alone = reference.encode(TEXTS, convert_to_numpy=True, batch_size=1)
    ours = PooledEncoder(read_model_folder(folder), device="cpu").encode(TEXTS, token_budget=1 << 20).embeddings
    assert _cosines(ours, alone).min() >= 0.9999  # one batch: the short texts padded


def test_a_model2vec_table_of_int8_with_token_weights_equals_sentence_transformers(folders, tmp_path):
    """model2vec stores a quantised table with a token mapping and per-token weights under 1. The weights
    were cast to the table's int8 and rounded to 0: every vector was zeros."""
    folder = shutil.copytree(folders[STATIC], tmp_path / "static")
    weights_file = folder / "model.safetensors"  # the static module is the folder's first, at its root
    table = load_file(weights_file)["embedding.weight"]
    generator = torch.Generator().manual_seed(1)
    save_file(
        {
            "embeddings": (table / table.abs().max() * 127).round().to(torch.int8),
            "mapping": torch.arange(len(table)),
            "weights": torch.rand(len(table), generator=generator) * 0.9 + 0.05,
        },
        weights_file,
    )
    ours = PooledEncoder(read_model_folder(folder), device="cpu").encode(TEXTS).embeddings
    theirs = _reference(folder)
    assert _cosines(ours, theirs).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_vectors_of_zeros_are_written_counted_and_warned_of(folders, tmp_path):
    """A static model whose table holds a token as zeros gives a text of only that token no direction:
    it has no cosine (DuckDB's is NaN, which it ranks first), and nothing said so."""
    folder = shutil.copytree(folders[STATIC], tmp_path / "static")
    weights_file = folder / "model.safetensors"
    table = load_file(weights_file)["embedding.weight"]
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    table[tokenizer["model"]["vocab"]["banana"]] = 0
    save_file({"embedding.weight": table}, weights_file)
    write_parquet(tmp_path / "kb.parquet", id=[1, 2, 3], text=["banana", "Banana banana", "An apple pie."])
    result = run_cli("--input", str(tmp_path / "kb.parquet"), "--output", str(tmp_path / "out"), "--model", str(folder))
    assert result.returncode == 0, result.stderr
    assert read_manifest(tmp_path / "out")["zero_vectors"] == 2
    assert "the model gave 2 of the texts embedded a vector of zeros (no direction" in result.stderr
    vectors = {key: np.array(row["embedding"]) for key, row in embedding_rows(tmp_path / "out").items()}
    assert not vectors[1].any() and not vectors[2].any()
    assert np.linalg.norm(vectors[3]) == pytest.approx(1.0, abs=1e-6)


def test_static_model_without_truncation_embeds_the_whole_text(folders, tmp_path):
    folder = tmp_path / "static-whole"
    shutil.copytree(folders["static"], folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["truncation"] = None
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    encoder = PooledEncoder(read_model_folder(folder), device="cpu")
    assert encoder.max_seq_length is None
    long = TEXTS[4]
    head = long[: len(long) // 4]
    # Past WHOLE_PIECE_CHARS, tokenised in pieces: still every token's vector in the mean.
    huge = "\n".join([*TEXTS] * (WHOLE_PIECE_CHARS // len(long)))
    texts = [long, head, huge]
    ours = encoder.encode(texts).embeddings
    assert len(huge) > WHOLE_PIECE_CHARS
    assert _cosines(ours, _reference(folder, texts)).min() >= 0.9999
    assert _cosines(ours[:1], ours[1:2])[0] < 0.999  # the tail of the text counts


def _job_vectors(output) -> np.ndarray:
    rows = embedding_rows(output)
    return np.stack([np.asarray(rows[i]["embedding"], dtype=np.float32) for i in range(len(TEXTS))])


def test_cli_embeds_with_a_last_token_model_and_a_free_prompt(folders, tmp_path):
    inputs = write_parquet(tmp_path / "in" / "a.parquet", id=list(range(len(TEXTS))), text=TEXTS)
    args = ["--input", str(inputs), "--output", str(tmp_path / "out"), "--model", str(folders["qwen3"])]
    result = run_cli(*args, "--prompt", "passage: ")
    assert result.returncode == 0, result.stderr
    model = read_manifest(tmp_path / "out")["model"]
    assert (model["modules"], model["prompt"]) == (
        ["Transformer(qwen3)", "Pooling(lasttoken)", "Normalize"],
        "passage: ",
    )
    ours = _job_vectors(tmp_path / "out")
    assert _cosines(ours, _reference(folders["qwen3"], prompt="passage: ")).min() >= 0.9999


def test_cli_embeds_with_a_dense_model_truncated_to_fewer_dimensions(folders, tmp_path):
    inputs = write_parquet(tmp_path / "in" / "a.parquet", id=list(range(len(TEXTS))), text=TEXTS)
    args = ["--input", str(inputs), "--output", str(tmp_path / "out"), "--model", str(folders["gemma3-text"])]
    result = run_cli(*args, "--truncate_dim", "16", "--prompt_name", "document")
    assert result.returncode == 0, result.stderr
    model = read_manifest(tmp_path / "out")["model"]
    assert (model["dim"], model["truncate_dim"], model["prompt"]) == (16, 16, "title: none | text: ")
    assert "Dense(32->128, Identity)" in model["modules"]
    ours = _job_vectors(tmp_path / "out")
    theirs = _reference(folders["gemma3-text"], prompt_name="document", truncate_dim=16, normalize_embeddings=True)
    assert ours.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_run_without_the_models_document_prompt_says_so_at_start(folders, tmp_path):
    """embeddinggemma defines `document`, which sentence-transformers' encode_document puts before each text
    and its encode does not: a run asking for no prompt embeds documents without it, and says so at start."""
    inputs = write_parquet(tmp_path / "in" / "a.parquet", id=list(range(len(TEXTS))), text=TEXTS)
    args = ["--input", str(inputs), "--output", str(tmp_path / "out"), "--plan_only"]
    gemma, named, minilm = run_clis(
        [*args, "--model", str(folders["gemma3-text"])],
        [*args, "--model", str(folders["gemma3-text"]), "--prompt_name", "document"],
        [*args, "--model", str(folders["bert"])],
    )
    assert [r.returncode for r in (gemma, named, minilm)] == [0, 0, 0], gemma.stderr
    warned = [line.partition(" WARNING pipeline.plan: ")[2] for line in gemma.stderr.splitlines()]
    assert [w for w in warned if w] == [
        "the model defines a prompt for documents, 'document' ('title: none | text: '), which sentence-transformers' "
        "encode_document puts before each text; this run embeds its texts without a prompt, as encode does: pass "
        "--prompt_name document to embed them as documents"
    ]
    assert "WARNING" not in named.stderr and "WARNING" not in minilm.stderr


def test_a_folder_read_as_sentence_transformers_reads_it_null_prompts_a_default_past_the_width_and_no_tokenizer(
    folders, tmp_path
):
    """A prompt saved as null is none (sentence-transformers saves its defaults so), a folder's truncate_dim
    past the model's width keeps the whole vector, as sentence-transformers' slice does: both ran the plan
    and failed in the workers, or were refused. E5's `passage` is named at start, for what it is. A folder
    whose tokenizer.json is gone is named in one line, not a traceback about sentencepiece."""
    folder = tmp_path / "e5-like"
    shutil.copytree(folders["bert"], folder)
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config.update(
        prompts={"query": None, "document": None, "passage": "passage: "}, default_prompt_name="query", truncate_dim=64
    )
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    broken = tmp_path / "no-tokenizer-json"  # transformers 5 saves its class as TokenizersBackend, no vocab.txt
    shutil.copytree(folders["modernbert"], broken)
    (broken / "tokenizer.json").unlink()
    inputs = write_parquet(tmp_path / "in" / "a.parquet", id=list(range(len(TEXTS))), text=TEXTS)
    args = ["--input", str(inputs), "--device", "cpu"]
    ran, refused = run_clis(
        [*args, "--output", str(tmp_path / "out"), "--model", str(folder)],
        [*args, "--output", str(tmp_path / "out-broken"), "--model", str(broken), "--plan_only"],
    )
    assert ran.returncode == 0, ran.stderr
    np.testing.assert_allclose(_job_vectors(tmp_path / "out"), _reference(folder, normalize_embeddings=True), atol=1e-5)
    assert read_manifest(tmp_path / "out")["model"]["dim"] == 32
    warned = [line.partition(" WARNING pipeline.plan: ")[2] for line in ran.stderr.splitlines()]
    assert [w for w in warned if w] == [
        "the model defines a prompt for documents, 'passage' ('passage: '), which retrieval models such as E5 are "
        "trained to see before documents (sentence-transformers 6's encode_document puts only a prompt named "
        "'document'); this run embeds its texts without a prompt, as encode does: pass --prompt_name passage to "
        "embed them as documents"
    ]
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {broken}: its tokenizer cannot be loaded (") and last.endswith(
        "); is tokenizer.json missing?"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--truncate_dim", "33"], "--truncate_dim 33 must be between 1 and the model's dimension 32"),
        (["--prompt", "query: ", "--prompt_name", "query"], "--prompt and --prompt_name both given: pass one"),
    ],
)
def test_cli_refuses_options_the_model_cannot_honour(folders, tmp_path, options, message):
    inputs = write_parquet(tmp_path / "in" / "a.parquet", id=[1], text=["x"])
    args = ["--input", str(inputs), "--output", str(tmp_path / "out"), "--model", str(folders["gemma3-text"])]
    result = run_cli(*args, "--plan_only", *options)
    assert (result.returncode, result.stderr.strip()) == (2, f"error: {message}")


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "mpnet"])
def test_position_limit_leaves_out_the_positions_before_the_padding_id(folders, family):
    """RoBERTa-style models number positions from the padding id + 1: --max_seq_length may go up
    to the positions left, and the plan refuses one more rather than the workers crashing."""
    config = json.loads((folders[family] / "config.json").read_text())
    padding_id = 1 if family == "mpnet" else config["pad_token_id"]  # MPNet's is always 1
    limit = config["max_position_embeddings"] - padding_id - 1
    folder = read_model_folder(folders[family])
    assert folder.seq_length(limit) == limit
    with pytest.raises(ModelFolderError, match=f"max_seq_length must be between 1 and {limit} for"):
        folder.seq_length(limit + 1)
    encoded = PooledEncoder(folder, device="cpu", max_seq_length=limit).encode([" ".join(["word"] * 4 * limit)])
    assert encoded.tokens == limit and encoded.truncated.tolist() == [True]


def test_a_cased_tokenizer_lower_cased_by_the_folder_equals_sentence_transformers(tmp_path):
    """do_lower_case over a cased tokenizer: the prompt is lower-cased with the text, by the tokenizers
    library's rules (a final Greek capital sigma becomes σ, where Python's str.lower gives ς)."""
    path = save_tiny_model(tmp_path / "cased", {}, prompts={"prompts": {"query": "Query: "}})
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False  # its vocabulary stays lower case: capitals become pieces
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    for name, changes in (
        ("tokenizer_config.json", {"do_lower_case": False}),
        ("sentence_bert_config.json", {"do_lower_case": True}),
    ):
        config = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps({**config, **changes}))
    texts = [*TEXTS, "ΟΔΟΣ ΚΑΛΟΣ ΝΟΜΟΣ", "Reset The VPN Token"]
    reference = SentenceTransformer(str(path), device="cpu")
    for prompt_name in (None, "query"):
        ours = PooledEncoder(read_model_folder(path), device="cpu", prompt_name=prompt_name).encode(texts).embeddings
        theirs = reference.encode(texts, prompt_name=prompt_name, normalize_embeddings=True)
        assert _cosines(ours, theirs).min() >= 0.99999, prompt_name


def _edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**(json.loads(path.read_text()) if path.exists() else {}), **changes}))


@pytest.mark.parametrize(
    ("config_file", "changes", "window", "truncated"),
    [
        ("sentence_bert_config.json", {"processing_kwargs": {"text": {"max_length": 16}}}, 16, [1, 4, 5]),
        (  # the common arguments win, as sentence-transformers merges them over the text's
            "sentence_bert_config.json",
            {"processing_kwargs": {"common": {"max_length": 16}, "text": {"max_length": 8}}},
            16,
            [1, 4, 5],
        ),
        ("sentence_bert_config.json", {"tokenizer_args": {"model_max_length": 20}}, 20, [1, 4, 5]),
        ("sentence_roberta_config.json", {"max_seq_length": 24}, 24, [4, 5]),  # an older name, read as ST reads it
    ],
)
def test_the_window_a_folders_config_sets_is_sentence_transformers_window(
    folders, tmp_path, config_file, changes, window, truncated
):
    path = shutil.copytree(folders["bert"], tmp_path / "bert")
    if config_file != "sentence_bert_config.json":
        (path / "sentence_bert_config.json").rename(path / config_file)
    _edit_json(path / config_file, **changes)
    folder = read_model_folder(path)
    assert folder.seq_length() == window
    encoded = PooledEncoder(folder, device="cpu").encode(TEXTS)
    assert np.flatnonzero(encoded.truncated).tolist() == truncated
    theirs = _reference(path)  # a window other than ST's would give cosines near 0.95 on the truncated texts
    assert _cosines(encoded.embeddings, theirs).min() >= 0.9999


def test_an_empty_config_leaves_an_older_named_one_read_as_sentence_transformers_reads_it(folders, tmp_path):
    path = shutil.copytree(folders["bert"], tmp_path / "bert")
    (path / "sentence_bert_config.json").rename(path / "sentence_roberta_config.json")
    _edit_json(path / "sentence_roberta_config.json", max_seq_length=24)
    (path / "sentence_bert_config.json").write_text("{}")
    folder = read_model_folder(path)
    assert folder.seq_length() == 24
    encoded = PooledEncoder(folder, device="cpu").encode(TEXTS)
    assert np.flatnonzero(encoded.truncated).tolist() == [4, 5]
    assert _cosines(encoded.embeddings, _reference(path)).min() >= 0.9999


def test_a_tokenizers_older_max_len_bounds_the_window_as_transformers_reads_it(folders, tmp_path):
    """transformers reads a tokenizer_config.json's `max_len` where it has no `model_max_length`, and
    sentence-transformers bounds a folder's window by it when its own config sets none."""
    path = shutil.copytree(folders["bert"], tmp_path / "bert")
    assert "max_seq_length" not in json.loads((path / "sentence_bert_config.json").read_text())
    settings = json.loads((path / "tokenizer_config.json").read_text())
    del settings["model_max_length"]  # where sentence-transformers 6 saves the window
    (path / "tokenizer_config.json").write_text(json.dumps({**settings, "max_len": 16}))
    folder = read_model_folder(path)
    assert folder.seq_length() == 16
    encoded = PooledEncoder(folder, device="cpu").encode(TEXTS)
    assert np.flatnonzero(encoded.truncated).tolist() == [1, 4, 5]
    assert _cosines(encoded.embeddings, _reference(path)).min() >= 0.9999


@pytest.mark.parametrize(
    ("file", "changes", "message"),
    [
        ("sentence_bert_config.json",
         {"modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"},
                              "message": {"method": "forward", "method_output_name": "last_hidden_state"}}},
         "has sentence-transformers embed texts through the tokenizer's chat template; this job embeds plain "
         "text only"),
        ("sentence_bert_config.json", {"processing_kwargs": {"text": {"padding_side": "left"}}},
         "processing_kwargs text padding_side is not supported (only a text or common max_length is)"),
        ("sentence_bert_config.json", {"config_kwargs": {"rope_theta": 10.0}},
         "config_kwargs rope_theta would change the model or its tokens and is not supported"),
        ("sentence_bert_config.json", {"transformer_task": "fill-mask"},
         "transformer_task 'fill-mask' is not supported; only 'feature-extraction'"),
        ("config_sentence_transformers.json", {"default_prompt_name": "passage"},
         "default_prompt_name 'passage' names no prompt; prompts defined: document, query"),
        ("config.json", {"model_type": "bart", "is_encoder_decoder": True},
         "'bart' is an encoder-decoder model; of those only the encoders of t5, mt5, umt5, longt5, "
         "switch_transformers are supported"),
        ("2_Dense/config.json", {"module_output_name": "projected"},
         "module_output_name 'projected' is not supported; only 'sentence_embedding'"),
        ("3_Normalize/config.json", {"module_input_name": "token_embeddings"},
         "module_input_name 'token_embeddings' is not supported; only 'sentence_embedding'"),
        ("1_Pooling/config.json", {"pooling_mode": []},
         "pooling_mode names no mode; supported: cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken"),
    ],
)  # fmt: skip
def test_folder_settings_the_encoder_cannot_honour_are_refused_naming_the_file(
    folders, tmp_path, file, changes, message
):
    """sentence-transformers would embed differently under each of these; ignoring them would give other vectors."""
    path = shutil.copytree(folders["bert-dense-tanh"], tmp_path / "model")
    _edit_json(path / file, **changes)
    with pytest.raises(ModelFolderError) as refused:
        read_model_folder(path)
    assert str(refused.value).startswith(f"{path / file}: ") and message in str(refused.value)


@pytest.mark.parametrize("family", ["qwen3", "bert"])
def test_a_tokenizer_splitting_special_tokens_reads_them_in_texts_as_text(folders, tmp_path, family):
    """tokenizer_config.json's split_special_tokens: a text holding the tokenizer's own special-token
    string (`<|endoftext|>`, `[SEP]`) is tokenised as text, as sentence-transformers does; the job's
    copies of the tokenizer lost the setting (cosine 0.81 for such a text)."""
    path = shutil.copytree(folders[family], tmp_path / family)
    _edit_json(path / "tokenizer_config.json", split_special_tokens=True)
    special = SentenceTransformer(str(path), device="cpu").tokenizer.all_special_tokens[0]
    texts = [f"rotate the keys {special} then restart", f"{special}", "plain text"]
    folder = read_model_folder(path)
    ours = PooledEncoder(folder, device="cpu").encode(texts).embeddings
    assert _cosines(ours, _reference(path, texts, normalize_embeddings=folder.normalize)).min() >= 0.9999
    # Runs of such a model from before the fix are embedded again once, not reused; other models' are.
    assert encoder_fixes(folder, None, "") == {"split_special_tokens": True}
    assert "split_special_tokens" not in encoder_fixes(read_model_folder(folders[family]), None, "")


def test_dense_weights_of_other_sizes_than_its_config_are_refused_naming_the_file(folders, tmp_path):
    path = shutil.copytree(folders["bert-dense-tanh"], tmp_path / "model")
    modules = json.loads((path / "modules.json").read_text())
    dense = path / next(module["path"] for module in modules if module["type"].endswith(".Dense"))
    weights = load_file(dense / "model.safetensors")
    out_features, in_features = weights["linear.weight"].shape
    weights["linear.weight"] = torch.zeros(out_features + 1, in_features)
    save_file(weights, dense / "model.safetensors")
    with pytest.raises(ModelFolderError) as refused:
        PooledEncoder(read_model_folder(path), device="cpu")
    assert str(refused.value).startswith(
        f"{dense / 'model.safetensors'}: does not fit its module's config: size mismatch for linear.weight: "
    )


def test_a_window_past_the_models_positions_is_refused_unless_max_seq_length_fits(folders, tmp_path):
    path = shutil.copytree(folders["bert"], tmp_path / "bert")
    positions = json.loads((path / "config.json").read_text())["max_position_embeddings"]
    _edit_json(path / "sentence_bert_config.json", max_seq_length=positions + 1)
    folder = read_model_folder(path)
    with pytest.raises(ModelFolderError) as refused:
        folder.seq_length()
    assert str(refused.value) == (
        f"{path}: its sentence-transformers config sets a window of {positions + 1} tokens, but the model has "
        f"positions for {positions}; pass --max_seq_length {positions} or less"
    )
    assert folder.seq_length(positions) == positions
    # The job: refused naming the folder (exit 2, as for the option), and run with the option it names.
    shard = write_parquet(tmp_path / "kb.parquet", id=["a"], text=["hello"])
    command = ["--input", str(shard), "--output", str(tmp_path / "out"), "--model", str(path), "--plan_only"]
    without, within = run_clis(command, [*command, "--max_seq_length", str(positions)])
    assert (without.returncode, without.stderr.splitlines()[-1]) == (2, f"error: {refused.value}")
    assert within.returncode == 0, within.stderr


@pytest.mark.parametrize("family", ["qwen3", "bert", "static"])
def test_a_tokenizer_that_truncates_on_the_left_keeps_each_long_texts_end(folders, tmp_path, family):
    """tokenizer_config.json's truncation_side (tokenizer.json's direction for a static model): the
    window holds a long text's last tokens, huge texts included, as in sentence-transformers."""
    path = shutil.copytree(folders[family], tmp_path / family)
    if family == "static":
        tokenizer = json.loads((path / "tokenizer.json").read_text())
        tokenizer["truncation"] = {"max_length": 16, "direction": "Left", "strategy": "LongestFirst", "stride": 0}
        (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    else:
        _edit_json(path / "tokenizer_config.json", truncation_side="left")
    huge = " ".join(f"word{i} ends here." for i in range(3_000))  # past the characters first tokenised
    texts = [*TEXTS, huge, huge.replace(" ", "\n")]
    encoded = PooledEncoder(read_model_folder(path), device="cpu").encode(texts)
    assert np.flatnonzero(encoded.truncated).tolist() == ([4, 6, 7] if family != "static" else [1, 4, 5, 6, 7])
    theirs = _reference(path, texts)
    assert _cosines(encoded.embeddings, theirs).min() >= 0.9999
    right = PooledEncoder(read_model_folder(folders[family]), device="cpu").encode(texts[-2:]).embeddings
    assert _cosines(encoded.embeddings[-2:], right).max() < 0.99  # the ends, not the starts
