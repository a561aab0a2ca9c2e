"""A static embedding model: each token has one vector, and a text is the mean of its tokens' vectors.

No transformer runs, so a CPU core embeds thousands of texts per second. Texts are
not truncated (sentence-transformers gives these models no window) and carry no
padding: every row's token ids go end to end, with offsets, into one EmbeddingBag.
"""

from __future__ import annotations

import numpy as np
import torch

from encoder.model_folder import StaticEmbeddingSpec
from encoder.modules.features import Features
from encoder.modules.weights import load_weights
from encoder.tokens import Tokenized


def _table(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """One row per token id; a model2vec file's token mapping and per-token weights folded in."""
    if "embedding.weight" in weights:
        return weights["embedding.weight"]
    table = weights["embeddings"].float()  # an int8 table times weights under 1 would round to zeros
    if "mapping" in weights:
        table = table[weights["mapping"].long()]
    if "weights" in weights:
        table = table * weights["weights"].float().unsqueeze(-1)
    return table


class StaticEmbedding(torch.nn.Module):
    def __init__(self, spec: StaticEmbeddingSpec) -> None:
        super().__init__()
        table = _table(load_weights(spec.path)).float()  # a plain table may be of any dtype
        self.embedding = torch.nn.EmbeddingBag.from_pretrained(table, mode="mean")

    def collate(self, tokenized: Tokenized, rows: np.ndarray, width: int, pad_id: int) -> Features:
        lengths = tokenized.lengths[rows]
        offsets = np.cumsum(lengths) - lengths
        return Features(torch.from_numpy(tokenized.of(rows)), offsets=torch.from_numpy(offsets))

    def forward(self, features: Features) -> Features:
        features.sentence_embedding = self.embedding(features.input_ids, features.offsets)
        return features
