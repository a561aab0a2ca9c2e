"""L2 normalisation, so that a dot product of two vectors is their cosine."""

from __future__ import annotations

import torch

from encoder.modules.features import Features


class Normalize(torch.nn.Module):
    def forward(self, features: Features) -> Features:
        features.sentence_embedding = torch.nn.functional.normalize(features.sentence_embedding, p=2, dim=-1)
        return features
