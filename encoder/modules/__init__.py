"""The modules a sentence-transformers folder lists, as torch modules, composed in its order.

Each module reads and extends `Features`, as sentence-transformers' modules pass a
features dict along: the input module (Transformer or StaticEmbedding) turns
token ids into vectors, Pooling makes one vector per text, and Dense, LayerNorm
and Normalize transform that vector (Dropout, which acts only in training, passes it on).
"""

from __future__ import annotations

import torch

from encoder.model_folder import (
    DenseSpec,
    DropoutSpec,
    LayerNormSpec,
    ModuleSpec,
    NormalizeSpec,
    PoolingSpec,
    StaticEmbeddingSpec,
    TransformerSpec,
)
from encoder.modules.dense import Dense
from encoder.modules.features import Features
from encoder.modules.layer_norm import LayerNorm
from encoder.modules.normalize import Normalize
from encoder.modules.pooling import Pooling
from encoder.modules.static_embedding import StaticEmbedding
from encoder.modules.transformer import Transformer

InputModule = Transformer | StaticEmbedding


def build_input(
    spec: TransformerSpec | StaticEmbeddingSpec, dtype: torch.dtype, unread_masks: bool = False
) -> InputModule:
    """`unread_masks`: on CUDA, where reading a mask's values makes the host wait (encoder.attention)."""
    if isinstance(spec, TransformerSpec):
        return Transformer(spec, dtype, unread_masks)
    return StaticEmbedding(spec)


def build_module(spec: ModuleSpec) -> torch.nn.Module:
    """A module that follows the input module; these run in float32 whatever the transformer's dtype."""
    if isinstance(spec, PoolingSpec):
        return Pooling(spec)
    if isinstance(spec, DenseSpec):
        return Dense(spec)
    if isinstance(spec, LayerNormSpec):
        return LayerNorm(spec)
    if isinstance(spec, NormalizeSpec):
        return Normalize()
    if isinstance(spec, DropoutSpec):  # acts only in training
        return torch.nn.Identity()
    raise TypeError(f"{type(spec).__name__} is an input module")


__all__ = ["Features", "InputModule", "build_input", "build_module"]
