"""What the modules pass along, like sentence-transformers' features dict."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    input_ids: torch.Tensor  # (rows, width) padded; for a static model, every row's ids end to end
    attention_mask: torch.Tensor | None = None  # (rows, width), 1 for real tokens
    token_type_ids: torch.Tensor | None = None  # (rows, width), where the tokenizer gives them and the model reads them
    offsets: torch.Tensor | None = None  # static model: where each row's ids start
    prompt_length: int = 0  # prompt tokens that pooling leaves out (Pooling's include_prompt false)
    token_embeddings: torch.Tensor | None = None
    sentence_embedding: torch.Tensor | None = None
