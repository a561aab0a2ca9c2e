"""A feed-forward layer on the sentence vector (LaBSE, GTR, embeddinggemma's projections)."""

from __future__ import annotations

from torch import nn

from encoder.model_folder import DenseSpec
from encoder.modules.features import Features
from encoder.modules.weights import load_module_weights


class Dense(nn.Module):
    """`activation(linear(x))`, plus `x` (or its projection) when the folder asks for a residual."""

    def __init__(self, spec: DenseSpec) -> None:
        super().__init__()
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        self.activation = getattr(nn, spec.activation)()
        self.residual: nn.Module | None = None
        if spec.use_residual:
            same = spec.in_features == spec.out_features
            self.residual = nn.Identity() if same else nn.Linear(spec.in_features, spec.out_features, bias=False)
        load_module_weights(self, spec.path)

    def forward(self, features: Features) -> Features:
        x = features.sentence_embedding
        out = self.activation(self.linear(x))
        if self.residual is not None:
            out = out + self.residual(x)
        features.sentence_embedding = out
        return features
