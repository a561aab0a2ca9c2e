"""A module folder's safetensors weights; pickle files are refused when the folder is read."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from encoder.model_folder import ModelFolderError


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def load_module_weights(module: torch.nn.Module, folder: Path) -> None:
    """`module`'s tensors from its folder's weights: all of them, at the sizes its config gives."""
    try:
        module.load_state_dict(load_weights(folder))
    except RuntimeError as e:  # tensors missing, unexpected or of other sizes: torch names each
        problems = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise ModelFolderError(f"{folder / 'model.safetensors'}: does not fit its module's config: {problems}") from e
