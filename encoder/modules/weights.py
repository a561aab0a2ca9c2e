"""A module folder's safetensors weights; pickle files are refused when the folder is read."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")
