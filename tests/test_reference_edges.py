"""Folder configurations at the edges of what sentence-transformers does: a prompt filling the window,
token type ids other than 0.

Each builds a tiny random model offline, saves it as sentence-transformers saves it, and compares
the job's encoder with `SentenceTransformer.encode` on the same texts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tokenizers
import tokenizers.processors
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules as models

from encoder import PooledEncoder, read_model_folder
from samples.model_families import _tokenizer
from tests.test_model_families import TEXTS as FAMILY_TEXTS

TEXTS = [*FAMILY_TEXTS, ""]  # and an empty text


def _save(
    folder: Path,
    config: transformers.PretrainedConfig,
    tokenizer: transformers.PreTrainedTokenizerBase,
    max_seq_length: int = 64,
    **st_kwargs,
) -> Path:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as hf:
        transformers.AutoModel.from_config(config).save_pretrained(hf, safe_serialization=True)
        tokenizer.save_pretrained(hf)
        transformer = models.Transformer(hf, max_seq_length=max_seq_length)
        pooling = models.Pooling(transformer.get_embedding_dimension(), include_prompt=False)
        SentenceTransformer(modules=[transformer, pooling], **st_kwargs).save(str(folder), safe_serialization=True)
    return folder


def _bert(tokenizer: transformers.PreTrainedTokenizerBase) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        initializer_range=0.2,
    )


def _compare(folder: Path, **kwargs) -> None:
    ours = PooledEncoder(read_model_folder(folder), "cpu", "float32", **kwargs).encode(TEXTS).embeddings
    model = SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})
    theirs = model.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True, **kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def save_prompt_filling_the_window(folder: Path) -> Path:
    """A tiny BERT pooling without its prompt, whose prompt `query` alone overflows its 16-token window."""
    tokenizer = _tokenizer("bert")
    prompt = "Represent this sentence for searching relevant passages about the topic of " * 3
    return _save(folder, _bert(tokenizer), tokenizer, max_seq_length=16, prompts={"query": prompt})


def save_xlnet(folder: Path) -> Path:
    """A tiny XLNet whose tokenizer gives its final <cls> type 2 (text <sep> <cls>, padded on the left),
    with a prompt `query`."""
    base = _tokenizer("bert")
    backend = tokenizers.Tokenizer.from_str(base.backend_tokenizer.to_str())
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A:0 [SEP]:0 [CLS]:2",
        pair="$A:0 [SEP]:0 $B:1 [SEP]:1 [CLS]:2",
        special_tokens=[("[CLS]", base.cls_token_id), ("[SEP]", base.sep_token_id)],
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{f"{name}_token": f"[{name.upper()}]" for name in ("cls", "sep", "pad", "unk", "mask")},
        padding_side="left",
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    config = transformers.XLNetConfig(
        vocab_size=len(tokenizer), d_model=32, n_layer=2, n_head=2, d_inner=64, initializer_range=0.2, pad_token_id=0
    )
    return _save(folder, config, tokenizer, prompts={"query": "query: "})


def test_a_prompt_filling_the_window_is_measured_within_it_as_sentence_transformers_does(tmp_path):
    """sentence-transformers measures the prompt tokenised alone and cut to the window; measured whole,
    the prompt left nothing to pool and every vector was zero (sentence-transformers pools the window's
    last token)."""
    _compare(save_prompt_filling_the_window(tmp_path / "model"), prompt_name="query")


def test_the_token_type_ids_the_tokenizer_gives_reach_the_model(tmp_path):
    """XLNet's model reads the types its tokenizer gives; sentence-transformers passes them, the encoder
    passed none (cosine 0.998)."""
    folder = save_xlnet(tmp_path / "xlnet")
    _compare(folder)
    _compare(folder, prompt_name="query")
