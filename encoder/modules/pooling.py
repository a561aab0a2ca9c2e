"""Pooling of token vectors into one sentence vector, as sentence-transformers pools."""

from __future__ import annotations

import torch

from encoder.model_folder import PoolingSpec
from encoder.modules.features import Features


def exclude_prompt(mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """A copy of `mask` without the prompt's tokens, which follow any left padding."""
    positions = torch.arange(mask.size(1), device=mask.device).unsqueeze(0)
    first_real = mask.to(torch.int32).argmax(dim=1, keepdim=True)
    return mask.masked_fill(positions < first_real + prompt_length, 0)


def pool(
    token_embeddings: torch.Tensor, attention_mask: torch.Tensor, modes: tuple[str, ...], prompt_length: int = 0
) -> torch.Tensor:
    """Concatenate the pooled vectors of each mode, in the order given.

    `attention_mask` is 1 for real tokens and 0 for padding, on either side; the
    first `prompt_length` real tokens are left out. The pooled vectors are float32, their sums
    taken in float32, so that half-precision models pool as accurately as float32 ones (and
    mean_sqrt_len_tokens cannot overflow float16).
    """
    rows, width, _ = token_embeddings.shape
    mask = exclude_prompt(attention_mask, prompt_length) if prompt_length else attention_mask
    vectors = []
    for mode in modes:
        if mode == "cls":
            first = mask.to(torch.int32).argmax(dim=1)
            vectors.append(token_embeddings[torch.arange(rows, device=first.device), first].float())
        elif mode == "lasttoken":
            seen, from_end = mask.flip(1).max(dim=1)
            last = torch.where(seen == 0, width - 1, width - 1 - from_end)
            vectors.append(token_embeddings[torch.arange(rows, device=last.device), last].float() * seen.unsqueeze(-1))
        elif mode == "max":
            padded = token_embeddings.masked_fill(mask.unsqueeze(-1) == 0, float("-inf"))
            vectors.append(padded.max(dim=1).values.float())
        elif mode == "weightedmean":  # weights 1, 2, 3 ... from the first real token on
            positions = torch.arange(1, width + 1, device=mask.device, dtype=torch.float32).unsqueeze(0)
            first_real = attention_mask.to(torch.int32).argmax(dim=1, keepdim=True)
            weights = (positions - first_real) * mask
            total = (token_embeddings * weights.unsqueeze(-1)).sum(dim=1, dtype=torch.float32)
            vectors.append(total / weights.sum(dim=1, keepdim=True).clamp(min=1e-9))
        else:
            weights = mask.unsqueeze(-1).to(token_embeddings.dtype)
            total = (token_embeddings * weights).sum(dim=1, dtype=torch.float32)
            count = mask.sum(dim=1, keepdim=True, dtype=torch.float32).clamp(min=1e-9)
            denominator = count if mode == "mean" else count.sqrt()
            vectors.append(total / denominator)
    return torch.cat(vectors, dim=-1)


class Pooling(torch.nn.Module):
    def __init__(self, spec: PoolingSpec) -> None:
        super().__init__()
        self.modes = spec.modes
        self.include_prompt = spec.include_prompt

    def forward(self, features: Features) -> Features:
        prompt_length = 0 if self.include_prompt else features.prompt_length
        vectors = pool(features.token_embeddings, features.attention_mask, self.modes, prompt_length)
        features.sentence_embedding = vectors
        return features
