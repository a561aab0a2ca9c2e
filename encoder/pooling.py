"""Pooling of token vectors into one sentence vector, as sentence-transformers pools."""

from __future__ import annotations

import torch


def pool(token_embeddings: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    """Concatenate the pooled vectors of each mode, in the order given.

    `mask` is 1 for tokens that take part (real tokens, minus any excluded
    prompt) and 0 for padding. Sums are taken in float32 so half-precision
    models pool as accurately as float32 ones.
    """
    vectors = []
    for mode in modes:
        if mode == "cls":
            first = mask.to(torch.int32).argmax(dim=1)
            vectors.append(token_embeddings[torch.arange(len(first), device=first.device), first])
        elif mode == "max":
            padded = token_embeddings.masked_fill(mask.unsqueeze(-1) == 0, float("-inf"))
            vectors.append(padded.max(dim=1).values)
        else:
            weights = mask.unsqueeze(-1).to(token_embeddings.dtype)
            total = (token_embeddings * weights).sum(dim=1, dtype=torch.float32)
            count = mask.sum(dim=1, keepdim=True, dtype=torch.float32).clamp(min=1e-9)
            denominator = count if mode == "mean" else count.sqrt()
            vectors.append((total / denominator).to(token_embeddings.dtype))
    return torch.cat(vectors, dim=-1)
