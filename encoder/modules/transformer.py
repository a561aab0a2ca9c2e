"""A transformers model that turns token ids into token vectors, as sentence-transformers' Transformer."""

from __future__ import annotations

import numpy as np
import torch
import transformers
from transformers import AutoModel

from encoder.model_folder import ENCODER_ONLY_CLASSES, TransformerSpec
from encoder.modules.features import Features
from encoder.tokens import Tokenized


class Transformer(torch.nn.Module):
    def __init__(self, spec: TransformerSpec, dtype: torch.dtype) -> None:
        super().__init__()
        encoder_only = ENCODER_ONLY_CLASSES.get(spec.model_type)
        model_class = getattr(transformers, encoder_only) if encoder_only else AutoModel
        self.model = model_class.from_pretrained(
            spec.path, dtype=dtype, use_safetensors=True, trust_remote_code=False
        ).eval()
        if hasattr(self.model.config, "use_cache"):  # decoder-only embedders: no key/value cache to keep
            self.model.config.use_cache = False
        self.padding_left = spec.padding_left

    def collate(self, tokenized: Tokenized, rows: np.ndarray, width: int, pad_id: int) -> Features:
        """Token ids and attention mask of `rows`, padded to `width` on the side the tokenizer asks for.

        A boolean mask places every row's ids at once: numpy fills it in row order.
        """
        lengths = tokenized.lengths[rows]
        positions = np.arange(width)
        mask = positions >= width - lengths[:, None] if self.padding_left else positions < lengths[:, None]
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        input_ids[mask] = tokenized.of(rows)
        return Features(torch.from_numpy(input_ids), torch.from_numpy(mask.astype(np.int64)))

    def forward(self, features: Features) -> Features:
        output = self.model(input_ids=features.input_ids, attention_mask=features.attention_mask)
        features.token_embeddings = output.last_hidden_state
        return features
