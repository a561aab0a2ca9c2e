"""Layer normalisation of the sentence vector, with the folder's learned scale and shift."""

from __future__ import annotations

from torch import nn

from encoder.model_folder import LayerNormSpec
from encoder.modules.features import Features
from encoder.modules.weights import load_module_weights


class LayerNorm(nn.Module):
    def __init__(self, spec: LayerNormSpec) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(spec.dimension)
        load_module_weights(self, spec.path)

    def forward(self, features: Features) -> Features:
        features.sentence_embedding = self.norm(features.sentence_embedding)
        return features
