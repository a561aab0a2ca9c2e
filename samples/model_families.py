"""Random models of every supported family, saved as sentence-transformers folders, offline.

Tests compare the job's encoder with sentence-transformers on tiny ones; the families
benchmark times both on ones the size of all-MiniLM-L6-v2. Each is built from
transformers' config classes with random weights (any difference in the computation
shows as a different vector) and saved by sentence-transformers itself, so the folder
layout is exactly what it writes. All share the default model's WordPiece vocabulary;
each family gets the special tokens and padding side its real models use (decoder-only
embedders append an end-of-sequence token and pad on the left).

    python -m samples.model_families --output models --size base qwen3 bert-dense-tanh

Needs sentence-transformers (a test requirement), which writes the folders.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules as models
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from encoder.model_folder import ENCODER_ONLY_CLASSES
from transforms.model_store import default_model_path


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_seq_length: int


SIZES = {
    "tiny": Size(hidden=32, layers=2, heads=2, intermediate=64, max_seq_length=64),
    "base": Size(hidden=384, layers=6, heads=12, intermediate=1536, max_seq_length=256),  # all-MiniLM-L6-v2's
    # Near-free: the job's machinery dominates (benchmarks.machinery); MiniLM's window.
    "free": Size(hidden=32, layers=1, heads=2, intermediate=64, max_seq_length=256),
}


def _shape(s: Size, vocab: int) -> dict:
    """The sizes BERT-style and decoder configs name alike."""
    return {
        "vocab_size": vocab,
        "hidden_size": s.hidden,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "intermediate_size": s.intermediate,
        "pad_token_id": 0,  # the shared vocabulary's [PAD]; RoBERTa-style models count positions from it
    }


def _encoder(config_class: type) -> Callable[[Size, int], transformers.PretrainedConfig]:
    def config(s: Size, vocab: int) -> transformers.PretrainedConfig:
        return config_class(**_shape(s, vocab), max_position_embeddings=2 * s.max_seq_length + 2)

    return config


def _decoder(config_class: type, **extra) -> Callable[[Size, int], transformers.PretrainedConfig]:
    def config(s: Size, vocab: int) -> transformers.PretrainedConfig:
        return config_class(
            **_shape(s, vocab),
            num_key_value_heads=max(1, s.heads // 2),
            head_dim=s.hidden // s.heads,
            max_position_embeddings=2 * s.max_seq_length,
            **extra,
        )

    return config


_bert = _encoder(transformers.BertConfig)


def _distilbert(s: Size, vocab: int) -> transformers.PretrainedConfig:
    return transformers.DistilBertConfig(
        vocab_size=vocab,
        dim=s.hidden,
        n_layers=s.layers,
        n_heads=s.heads,
        hidden_dim=s.intermediate,
        max_position_embeddings=2 * s.max_seq_length,
    )


def _t5(config_class: type, **extra) -> Callable[[Size, int], transformers.PretrainedConfig]:
    """A T5-style config (T5, LongT5): widths named d_model, d_kv, d_ff."""

    def config(s: Size, vocab: int) -> transformers.PretrainedConfig:
        return config_class(
            vocab_size=vocab,
            d_model=s.hidden,
            d_kv=s.hidden // s.heads,
            d_ff=s.intermediate,
            num_layers=s.layers,
            num_heads=s.heads,
            pad_token_id=0,
            decoder_start_token_id=0,
            **extra,
        )

    return config


def _xlm(config_class: type) -> Callable[[Size, int], transformers.PretrainedConfig]:
    """XLM and FlauBERT: widths named emb_dim, n_layers, n_heads. Their type ids index the word embeddings,
    whose padding row (pad_index, left at its default 2 as in their real vocabularies) is not type 0's."""

    def config(s: Size, vocab: int) -> transformers.PretrainedConfig:
        return config_class(
            vocab_size=vocab,
            emb_dim=s.hidden,
            n_layers=s.layers,
            n_heads=s.heads,
            max_position_embeddings=2 * s.max_seq_length,
        )

    return config


def _electra(s: Size, vocab: int) -> transformers.PretrainedConfig:
    config = _encoder(transformers.ElectraConfig)(s, vocab)
    config.embedding_size = s.hidden
    return config


def _modernbert(s: Size, vocab: int) -> transformers.PretrainedConfig:
    config = _encoder(transformers.ModernBertConfig)(s, vocab)
    config.local_attention = 16  # a window shorter than the texts, so local attention is exercised
    config.cls_token_id = config.bos_token_id = 101  # the shared vocabulary's [CLS] and [SEP]
    config.sep_token_id = config.eos_token_id = 102
    return config


@dataclass(frozen=True)
class Family:
    config: Callable[[Size, int], transformers.PretrainedConfig]
    pooling: str | tuple[str, ...] = "mean"
    # "bert": [CLS] text [SEP], right padding; "eos": text <eos>, left padding (decoder-only);
    # "t5": text </s>, right padding
    special_tokens: str = "bert"
    sentence_modules: Callable[[int], list[torch.nn.Module]] = field(default=lambda dim: [])
    normalize: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    truncate_dim: int | None = None
    similarity: str | None = None  # config_sentence_transformers.json's similarity_fn_name


def _gtr(dim: int) -> list[torch.nn.Module]:
    return [models.Dense(dim, dim, bias=False, activation_function=torch.nn.Identity())]


def _embeddinggemma(dim: int) -> list[torch.nn.Module]:
    return [
        models.Dense(dim, 4 * dim, bias=False, activation_function=torch.nn.Identity()),
        models.Dense(4 * dim, dim, bias=False, activation_function=torch.nn.Identity()),
    ]


def _labse(dim: int) -> list[torch.nn.Module]:
    return [models.Dense(dim, dim, bias=True, activation_function=torch.nn.Tanh())]


def _hardswish(dim: int) -> list[torch.nn.Module]:
    return [models.Dense(dim, dim, bias=True, activation_function=torch.nn.Hardswish())]


def _dropout(dim: int) -> list[torch.nn.Module]:
    return [models.Dense(dim, dim, bias=True, activation_function=torch.nn.Tanh()), models.Dropout(0.2)]


def _layer_norm(dim: int) -> list[torch.nn.Module]:
    norm = models.LayerNorm(dim)
    torch.nn.init.normal_(norm.norm.weight, 1.0, 0.1)  # a learned scale and shift, not the identity
    torch.nn.init.normal_(norm.norm.bias, 0.0, 0.1)
    return [norm]


FAMILIES: dict[str, Family] = {
    "bert": Family(_bert),
    "roberta": Family(_encoder(transformers.RobertaConfig), pooling="cls"),
    "xlm-roberta": Family(_encoder(transformers.XLMRobertaConfig)),
    "distilbert": Family(_distilbert),
    "mpnet": Family(_encoder(transformers.MPNetConfig)),
    "modernbert": Family(_modernbert),
    "deberta-v2": Family(_encoder(transformers.DebertaV2Config)),
    "electra": Family(_electra, pooling="cls"),
    "xlm": Family(_xlm(transformers.XLMConfig)),
    "flaubert": Family(_xlm(transformers.FlaubertConfig)),
    "t5-encoder": Family(_t5(transformers.T5Config), special_tokens="t5", sentence_modules=_gtr),
    # A local-attention window shorter than the texts, so that it is exercised.
    "longt5-encoder": Family(
        _t5(transformers.LongT5Config, local_radius=8), special_tokens="t5", sentence_modules=_gtr
    ),
    "gemma3-text": Family(
        _decoder(transformers.Gemma3TextConfig, use_bidirectional_attention=True, sliding_window=16),
        sentence_modules=_embeddinggemma,
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
    ),
    "qwen3": Family(_decoder(transformers.Qwen3Config), pooling="lasttoken", special_tokens="eos"),
    "qwen2": Family(_decoder(transformers.Qwen2Config), pooling="lasttoken", special_tokens="eos"),
    "mistral": Family(_decoder(transformers.MistralConfig), pooling="lasttoken", special_tokens="eos"),
    "llama": Family(_decoder(transformers.LlamaConfig), pooling="lasttoken", special_tokens="eos"),
    "bert-weightedmean": Family(_bert, pooling="weightedmean"),
    "bert-mean-sqrt-len": Family(_bert, pooling="mean_sqrt_len_tokens"),
    "bert-concat": Family(_bert, pooling=("cls", "mean", "max")),
    "bert-dense-tanh": Family(_bert, pooling="cls", sentence_modules=_labse),
    "bert-dense-hardswish": Family(_bert, sentence_modules=_hardswish),
    "bert-layernorm": Family(_bert, sentence_modules=_layer_norm),
    "bert-unnormalized": Family(_bert, normalize=False),
    "bert-dropout": Family(_bert, sentence_modules=_dropout),
    # Trained for the dot product (msmarco-bert-base-dot-v5, msmarco-distilbert-base-tas-b).
    "bert-dot": Family(_bert, normalize=False, similarity="dot"),
    "bert-matryoshka": Family(_bert, truncate_dim=16),
}
STATIC = "static"  # model2vec-style: a StaticEmbedding module alone, then Normalize
NAMES = (*FAMILIES, STATIC)


def _tokenizer(special_tokens: str) -> PreTrainedTokenizerFast:
    base = AutoTokenizer.from_pretrained(default_model_path())
    if special_tokens == "bert":
        return base
    backend = Tokenizer.from_str(base.backend_tokenizer.to_str())
    eos = "[SEP]"
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, base.sep_token_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        pad_token="[PAD]",
        unk_token="[UNK]",
        padding_side="left" if special_tokens == "eos" else "right",
        model_max_length=512,
    )


def _static(folder: Path, size: Size) -> Path:
    backend = Tokenizer.from_str(AutoTokenizer.from_pretrained(default_model_path()).backend_tokenizer.to_str())
    table = torch.randn(backend.get_vocab_size(), size.hidden)
    model = SentenceTransformer(modules=[models.StaticEmbedding(backend, embedding_weights=table), models.Normalize()])
    model.save(str(folder), safe_serialization=True)
    return folder


def save_family(name: str, folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random model of family `name` as a sentence-transformers folder at `folder`."""
    torch.manual_seed(seed)
    shape = SIZES[size]
    if name == STATIC:
        return _static(folder, shape)
    family = FAMILIES[name]
    tokenizer = _tokenizer(family.special_tokens)
    config = family.config(shape, len(tokenizer))
    # Ten times transformers' usual spread: at 0.02 a random CLS-pooled model gives every text nearly
    # the same vector, and a comparison with sentence-transformers could not see a fault.
    if hasattr(config, "initializer_range"):
        config.initializer_range = 0.2
    with tempfile.TemporaryDirectory() as hf:
        encoder_only = ENCODER_ONLY_CLASSES.get(config.model_type)  # sentence-t5 and GTR keep the encoder only
        if encoder_only:
            model = getattr(transformers, encoder_only)(config)
        else:
            model = transformers.AutoModel.from_config(config)
        model.save_pretrained(hf, safe_serialization=True)
        tokenizer.save_pretrained(hf)
        transformer = models.Transformer(hf, max_seq_length=shape.max_seq_length)
        pooling = models.Pooling(shape.hidden, pooling_mode=family.pooling)
        modules = [transformer, pooling, *family.sentence_modules(pooling.get_embedding_dimension())]
        if family.normalize:
            modules.append(models.Normalize())
        st = SentenceTransformer(
            modules=modules,
            prompts=family.prompts or None,
            truncate_dim=family.truncate_dim,
            similarity_fn_name=family.similarity,
        )
        st.save(str(folder), safe_serialization=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("names", nargs="*", default=list(NAMES), help=f"families (default: all): {', '.join(NAMES)}")
    args = parser.parse_args()
    for name in args.names:
        folder = save_family(name, args.output / name, args.size)
        print(json.dumps({"family": name, "folder": str(folder)}))


if __name__ == "__main__":
    main()
