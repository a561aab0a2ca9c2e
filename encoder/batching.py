"""Batching policy: group rows of similar token length under a token budget.

Padding every row of a batch to the longest one wastes compute on padding;
sorting by length and cutting batches by padded-token count (rather than a
fixed number of rows) keeps padding small and the work per batch even.
"""

from __future__ import annotations

import numpy as np


def token_budget_batches(lengths: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Split row indices into batches whose padded size (rows x longest) fits the budget.

    Rows are taken in ascending length order; a row longer than the budget on
    its own still gets a batch of one.
    """
    order = np.argsort(lengths, kind="stable")
    batches = []
    start = 0
    for end in range(1, len(order) + 1):
        if end == len(order) or (end - start + 1) * lengths[order[end]] > token_budget:
            batches.append(order[start:end])
            start = end
    return batches
