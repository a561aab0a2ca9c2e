"""Reads a sentence-transformers model folder into a plain description.

The folder's own files decide how the model is run (as sentence-transformers
does): `modules.json` lists the modules, `1_Pooling/config.json` the pooling,
`sentence_bert_config.json` the sequence length and lower-casing, and
`config_sentence_transformers.json` any prompts. Weights load from
safetensors only: pickle weights can run arbitrary code when loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
# Legacy boolean keys of 1_Pooling/config.json, in sentence-transformers'
# concatenation order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelFolderError(ValueError):
    """The model folder cannot be used; the message says what and where."""


@dataclass(frozen=True)
class ModelFolder:
    """What the pipeline needs to know to run a sentence-transformers model."""

    path: Path
    transformer_path: Path
    hidden_size: int
    max_position_embeddings: int
    tokenizer_max_length: int
    pooling_modes: tuple[str, ...]
    include_prompt: bool
    normalize: bool
    max_seq_length: int | None
    do_lower_case: bool
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    @property
    def dim(self) -> int:
        """Width of the sentence vector: the pooled modes are concatenated."""
        return self.hidden_size * len(self.pooling_modes)

    def seq_length(self, override: int | None = None) -> int:
        """Tokens per text the model sees; longer texts are truncated to it."""
        if override is not None:
            if not 0 < override <= self.max_position_embeddings:
                raise ModelFolderError(
                    f"max_seq_length must be between 1 and {self.max_position_embeddings} "
                    f"for {self.path}, got {override}"
                )
            return override
        return self.max_seq_length or min(self.max_position_embeddings, self.tokenizer_max_length)

    @property
    def weights_files(self) -> list[Path]:
        """The safetensors files holding the transformer's weights."""
        index = self.transformer_path / "model.safetensors.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [self.transformer_path / s for s in shards]
        return [self.transformer_path / "model.safetensors"]

    def weights_sha256(self) -> str:
        """sha256 over the weight files, so outputs name the exact weights used."""
        digest = hashlib.sha256()
        for path in self.weights_files:
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
        return digest.hexdigest()

    def prompt(self, name: str | None) -> str:
        """The prompt text for `name`, or the folder's default prompt when None."""
        if name is None:
            return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""
        if name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise ModelFolderError(f"{self.path}: no prompt named {name!r}; prompts defined: {known}")
        return self.prompts[name]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from e


def _pooling_modes(config: dict, path: Path) -> tuple[str, ...]:
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key)) or ("mean",)
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported:
        raise ModelFolderError(
            f"{path}: pooling mode {', '.join(unsupported)} is not supported; supported: {', '.join(POOLING_MODES)}"
        )
    return modes


def _check_weights(folder: Path) -> None:
    if any((folder / name).exists() for name in _SAFETENSORS_FILES):
        return
    pickles = [name for name in _PICKLE_FILES if (folder / name).exists()]
    if pickles:
        raise ModelFolderError(
            f"{folder}: only pickle weights ({', '.join(pickles)}) found; they are refused because "
            "loading them can run arbitrary code. Convert the model to model.safetensors."
        )
    raise ModelFolderError(f"{folder}: no model.safetensors weights found")


def read_model_folder(path: str | Path) -> ModelFolder:
    """Describe the sentence-transformers model saved at `path`, or explain why it can't be used."""
    root = Path(path)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        raise ModelFolderError(f"{root}: not a sentence-transformers model folder (no modules.json found)")
    transformer = pooling = None
    normalize = False
    for module in _read_json(modules_file):
        kind = module["type"].rsplit(".", 1)[-1]
        module_path = root / module.get("path", "")
        if kind == "Transformer":
            transformer = module_path
        elif kind == "Pooling":
            pooling = module_path
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelFolderError(f"{modules_file}: module type {module['type']!r} is not supported")
    if transformer is None or pooling is None:
        raise ModelFolderError(f"{modules_file}: needs a Transformer and a Pooling module")
    _check_weights(transformer)

    model_config = _read_json(transformer / "config.json")
    tokenizer_file = transformer / "tokenizer_config.json"
    tokenizer_config = _read_json(tokenizer_file) if tokenizer_file.exists() else {}
    pooling_config = _read_json(pooling / "config.json")
    st_config_file = transformer / "sentence_bert_config.json"
    st_config = _read_json(st_config_file) if st_config_file.exists() else {}
    prompts_file = root / "config_sentence_transformers.json"
    prompts_config = _read_json(prompts_file) if prompts_file.exists() else {}
    return ModelFolder(
        path=root,
        transformer_path=transformer,
        hidden_size=model_config["hidden_size"],
        max_position_embeddings=model_config["max_position_embeddings"],
        tokenizer_max_length=int(tokenizer_config.get("model_max_length", 1 << 30)),
        pooling_modes=_pooling_modes(pooling_config, pooling / "config.json"),
        include_prompt=pooling_config.get("include_prompt", True),
        normalize=normalize,
        max_seq_length=st_config.get("max_seq_length"),
        do_lower_case=st_config.get("do_lower_case", False),
        prompts=prompts_config.get("prompts") or {},
        default_prompt_name=prompts_config.get("default_prompt_name"),
    )
