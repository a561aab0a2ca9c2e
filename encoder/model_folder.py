"""Reads a sentence-transformers model folder into a plain description of its modules.

The folder's own files decide how the model is run, as sentence-transformers
does: `modules.json` lists the modules in the order they run, each module's
folder holds its config (and weights), `sentence_bert_config.json` the sequence
length and lower-casing, and `config_sentence_transformers.json` any prompts
and a default `truncate_dim`. Nothing here imports torch: the launcher reads a
folder to refuse what cannot run before any worker starts. Weights load from
safetensors only, and nothing that would run code shipped with the model is
accepted (pickle weights, `auto_map` classes, modules outside sentence-transformers).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Legacy boolean keys of a Pooling config, in sentence-transformers' concatenation order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# How configs name the width of a transformer's hidden states (DistilBERT: dim, T5: d_model).
_HIDDEN_SIZE_KEYS = ("hidden_size", "dim", "d_model", "n_embd", "emb_dim")  # emb_dim: XLM, FlauBERT
_POSITION_KEYS = ("max_position_embeddings", "n_positions")
# Models whose position ids start after the padding id (RoBERTa's scheme): of 514 positions,
# 512 hold tokens.
_PADDING_OFFSET_POSITIONS = {
    "camembert",
    "data2vec-text",
    "ibert",
    "longformer",
    "luke",
    "markuplm",
    "mpnet",
    "roberta",
    "roberta-prelayernorm",
    "xlm-roberta",
    "xlm-roberta-xl",
}
# Encoder-decoder families whose encoder alone embeds (sentence-t5, GTR), by the transformers class
# that loads only the encoder: AutoModel would load the decoder too, and want decoder inputs.
ENCODER_ONLY_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
    "longt5": "LongT5EncoderModel",
    "switch_transformers": "SwitchTransformersEncoderModel",
}
_SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_ST_PREFIX = "sentence_transformers."
# Dense activations are named by class path; only torch's own parameterless ones are built.
ACTIVATIONS = (
    "Identity", "Tanh", "ReLU", "GELU", "SiLU", "Sigmoid", "Softplus", "LeakyReLU", "ELU", "Mish",
    "Hardtanh", "ReLU6", "SELU", "Hardswish",
)  # fmt: skip
# The names sentence-transformers gives a Transformer's own config, newest first; it reads the first that
# holds any setting (an empty one, `{}`, is passed over).
_ST_CONFIG_FILES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
# Loading arguments a Transformer's config may hold that leave its vectors as they are (where to
# find files, how to load them; trust_remote_code is dropped by sentence-transformers too). dtype
# is the computing precision, which --dtype decides here.
_LOADING_KEYS = {
    "cache_dir", "local_files_only", "revision", "subfolder", "token", "trust_remote_code", "use_fast",
    "use_safetensors", "low_cpu_mem_usage", "device_map", "attn_implementation", "add_pooling_layer",
    "dtype", "torch_dtype",
}  # fmt: skip
# The only modality sentence-transformers' Transformer may have here: plain text through forward.
# A "message" entry would put every text through the tokenizer's chat template first.
_TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
SUPPORTED_MODULES = ("Transformer", "StaticEmbedding", "Pooling", "Dense", "LayerNorm", "Normalize", "Dropout")
# How the model's vectors are compared (config_sentence_transformers.json's similarity_fn_name);
# sentence-transformers takes cosine when the folder names none or one of its multi-vector kinds.
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")


class ModelFolderError(ValueError):
    """The model folder cannot be used; the message says what and where."""


@dataclass(frozen=True)
class TransformerSpec:
    """A transformers model and its tokenizer, which turn texts into token vectors."""

    path: Path
    model_type: str
    hidden_size: int
    token_positions: int  # positions that hold tokens: the longest input the model takes
    tokenizer_max_length: int
    max_seq_length: int | None
    do_lower_case: bool
    split_special_tokens: bool = False  # a text's special-token strings are text (tokenizer_config.json)


@dataclass(frozen=True)
class StaticEmbeddingSpec:
    """One vector per token, averaged over the text (model2vec-style static models)."""

    path: Path
    dim: int
    max_seq_length: int | None  # its tokenizer.json's truncation, which sentence-transformers keeps


@dataclass(frozen=True)
class PoolingSpec:
    path: Path
    modes: tuple[str, ...]
    include_prompt: bool


@dataclass(frozen=True)
class DenseSpec:
    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of ACTIVATIONS
    use_residual: bool


@dataclass(frozen=True)
class LayerNormSpec:
    path: Path
    dimension: int


@dataclass(frozen=True)
class NormalizeSpec:
    path: Path


@dataclass(frozen=True)
class DropoutSpec:
    """Dropout on the sentence vector: it only acts in training, so encoding passes the vector through."""

    path: Path


ModuleSpec = (
    TransformerSpec | StaticEmbeddingSpec | PoolingSpec | DenseSpec | LayerNormSpec | NormalizeSpec | DropoutSpec
)
InputSpec = TransformerSpec | StaticEmbeddingSpec


@dataclass(frozen=True)
class ModelFolder:
    """What the pipeline needs to know to run a sentence-transformers model: its modules, in order."""

    path: Path
    modules: tuple[ModuleSpec, ...]
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    truncate_dim: int | None = None  # the folder's own Matryoshka default
    similarity: str = "cosine"  # one of SIMILARITIES

    @property
    def input(self) -> InputSpec:
        """The first module: the one that reads tokens."""
        return self.modules[0]  # type: ignore[return-value]

    @property
    def tokenizer_path(self) -> Path:
        return self.input.path

    @property
    def pooling(self) -> PoolingSpec | None:
        return next((m for m in self.modules if isinstance(m, PoolingSpec)), None)

    @property
    def pooling_modes(self) -> tuple[str, ...]:
        return self.pooling.modes if self.pooling else ()

    @property
    def include_prompt(self) -> bool:
        return self.pooling.include_prompt if self.pooling else True

    @property
    def normalize(self) -> bool:
        """Whether the vectors come out normalised: Normalize is the last module that acts."""
        acting = [m for m in self.modules if not isinstance(m, DropoutSpec)]
        return isinstance(acting[-1], NormalizeSpec)

    @property
    def do_lower_case(self) -> bool:
        return isinstance(self.input, TransformerSpec) and self.input.do_lower_case

    @property
    def dim(self) -> int:
        """Width of the vector the modules produce, before any truncation."""
        width = 0
        for module in self.modules:
            width = _width_after(module, width)
        return width

    def output_dim(self, truncate_dim: int | None = None) -> int:
        """Width of the vectors written: `truncate_dim` (else the folder's default) or the whole vector."""
        dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if dim is None:
            return self.dim
        if truncate_dim is None and dim > self.dim:
            return self.dim  # sentence-transformers slices by the folder's default: past the end, the whole vector
        if not 0 < dim <= self.dim:
            where = "" if truncate_dim is not None else f"{self.path / 'config_sentence_transformers.json'}: "
            raise ModelFolderError(f"{where}truncate_dim {dim} must be between 1 and the model's dimension {self.dim}")
        return dim

    def seq_length(self, override: int | None = None) -> int | None:
        """Tokens per text the model sees (longer texts are truncated); None: no limit (a static model
        whose tokenizer.json does not truncate)."""
        spec = self.input
        limit = spec.token_positions if isinstance(spec, TransformerSpec) else 1 << 30
        if override is not None:
            if not 0 < override <= limit:
                raise ModelFolderError(f"max_seq_length must be between 1 and {limit} for {self.path}, got {override}")
            return override
        if isinstance(spec, StaticEmbeddingSpec):
            return spec.max_seq_length
        if spec.max_seq_length is None:
            return min(spec.token_positions, spec.tokenizer_max_length)
        if not 0 < spec.max_seq_length <= limit:
            raise ModelFolderError(
                f"{spec.path}: its sentence-transformers config sets a window of {spec.max_seq_length} tokens, but "
                f"the model has positions for {limit}; pass --max_seq_length {limit} or less"
            )
        return spec.max_seq_length

    @property
    def weights_files(self) -> list[Path]:
        """The safetensors files holding the input module's weights."""
        root = self.input.path
        index = root / "model.safetensors.index.json"
        if index.exists():
            listed = _read_json(index)
            weight_map = listed.get("weight_map") if isinstance(listed, dict) else None
            if not isinstance(weight_map, dict):
                raise ModelFolderError(f"{index}: no weight_map of tensor names to shard files")
            shards = sorted({str(shard) for shard in weight_map.values()})
            # A shard elsewhere would be loaded from outside the folder, and its digest (folder_digest) miss it.
            outside = [shard for shard in shards if Path(shard).name != shard or shard in ("", ".", "..")]
            if outside:
                raise ModelFolderError(
                    f"{index}: weight_map names {outside[0]!r}; shards must be files beside it, in the model's folder"
                )
            return [root / s for s in shards]
        return [root / "model.safetensors"]

    def weights_sha256(self) -> str:
        """sha256 over the input module's weight files, so outputs name the exact weights used; each
        checked whole first (a copy cut short failed only in the workers, where a rerun cannot help)."""
        digest = hashlib.sha256()
        for path in self.weights_files:
            _check_whole_safetensors(path)
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

    def describe(self) -> list[str]:
        """The modules in order, as the manifest records them."""
        names = []
        for m in self.modules:
            if isinstance(m, PoolingSpec):
                names.append(f"Pooling({'+'.join(m.modes)})")
            elif isinstance(m, DenseSpec):
                names.append(f"Dense({m.in_features}->{m.out_features}, {m.activation})")
            elif isinstance(m, TransformerSpec):
                names.append(f"Transformer({m.model_type})")
            else:
                names.append(type(m).__name__.removesuffix("Spec"))
        return names


def _width_after(module: ModuleSpec, width: int) -> int:
    """The width of the vectors a module outputs, given the width it receives."""
    if isinstance(module, TransformerSpec):
        return module.hidden_size
    if isinstance(module, StaticEmbeddingSpec):
        return module.dim
    if isinstance(module, PoolingSpec):
        return width * len(module.modes)
    if isinstance(module, DenseSpec):
        return module.out_features
    return width


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from e


def _optional_json(path: Path) -> dict:
    return _read_json(path) if path.exists() else {}


def _check_whole_safetensors(path: Path) -> None:
    """A safetensors file holds an 8-byte header length, the JSON header, then the tensors' bytes up to
    the largest end offset the header gives."""
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing (the model's weights; model.safetensors.index.json lists it)")
    size = path.stat().st_size
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(length)) if 8 + length <= size else None
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            header = None
    if header is None or 8 + length + end > size:
        raise ModelFolderError(
            f"{path}: not a whole safetensors file ({size} bytes"
            + (f", of the {8 + length + end} its header describes" if header is not None else ", no readable header")
            + "); copy the model again"
        )


def _check_weights(folder: Path, what: str = "model.safetensors weights") -> None:
    if any((folder / name).exists() for name in _SAFETENSORS_FILES):
        return
    pickles = [name for name in _PICKLE_FILES if (folder / name).exists()]
    if pickles:
        raise ModelFolderError(
            f"{folder}: only pickle weights ({', '.join(pickles)}) found; they are refused because "
            "loading them can run arbitrary code. Convert the model to model.safetensors."
        )
    raise ModelFolderError(f"{folder}: no {what} found")


def _remote_code(config: dict, path: Path) -> None:
    """Refuse classes the folder ships as Python: loading them would run that file."""
    auto_map = config.get("auto_map") or {}
    if not isinstance(auto_map, dict):
        raise ModelFolderError(f"{path}: auto_map is {type(auto_map).__name__}, not classes mapped to their code")
    for auto_class, references in auto_map.items():
        # A tokenizer's is a pair, slow class and fast class: either may be the folder's own code.
        reference = next((r for r in (references if isinstance(references, list) else [references]) if r), None)
        if not reference:
            continue
        module = str(reference).split("--")[-1].rsplit(".", 1)[0]
        raise ModelFolderError(
            f"{path}: {auto_class} is {reference!r}, custom code the model ships in {module}.py; running a "
            "model's own code is refused (trust_remote_code is never set). Use a model that transformers "
            "supports natively."
        )


def _transformer(path: Path) -> TransformerSpec:
    _check_weights(path)
    config_file = path / "config.json"
    config = _read_json(config_file)
    _remote_code(config, config_file)
    tokenizer_config_file = path / "tokenizer_config.json"
    tokenizer_config = _optional_json(tokenizer_config_file)
    _remote_code(tokenizer_config, tokenizer_config_file)
    hidden = next((config[k] for k in _HIDDEN_SIZE_KEYS if k in config), None)
    if hidden is None:
        raise ModelFolderError(f"{config_file}: no hidden size (looked for {', '.join(_HIDDEN_SIZE_KEYS)})")
    model_type = config.get("model_type", "unknown")
    if config.get("is_encoder_decoder") and model_type not in ENCODER_ONLY_CLASSES:
        raise ModelFolderError(
            f"{config_file}: {model_type!r} is an encoder-decoder model; of those only the encoders of "
            f"{', '.join(ENCODER_ONLY_CLASSES)} are supported"
        )
    st_file, st_config = _st_config(path)
    return TransformerSpec(
        path=path,
        model_type=model_type,
        hidden_size=int(hidden),
        token_positions=_token_positions(config),
        tokenizer_max_length=_tokenizer_window(tokenizer_config),
        max_seq_length=_window(st_config, st_file),
        do_lower_case=st_config.get("do_lower_case", False),
        split_special_tokens=tokenizer_config.get("split_special_tokens") is True,
    )


def _tokenizer_window(tokenizer_config: dict) -> int:
    """The tokenizer's own limit as transformers reads it: `model_max_length`, else the older `max_len`;
    none (or null) is no limit."""
    limit = tokenizer_config.get("model_max_length", tokenizer_config.get("max_len"))
    return 1 << 30 if limit is None else int(limit)


def _st_config(path: Path) -> tuple[Path, dict]:
    """A Transformer's own config and its file, as sentence-transformers finds it: the first of
    _ST_CONFIG_FILES that holds a setting. Read from the first that existed, an empty
    sentence_bert_config.json beside an older sentence_roberta_config.json of `max_seq_length` 12
    gave a window of 64 where sentence-transformers' was 12 (cosine 0.71 on a text past 12 tokens)."""
    for name in _ST_CONFIG_FILES:
        if config := _optional_json(path / name):
            return path / name, config
    return path / _ST_CONFIG_FILES[0], {}


def _window(st_config: dict, st_file: Path) -> int | None:
    """The window the Transformer's config sets, as sentence-transformers reads it: a tokenizer
    argument `model_max_length` over `max_seq_length`, a call-time `max_length` over both. Settings
    that would change its tokens or outputs otherwise are refused, not ignored."""
    modalities = st_config.get("modality_config")
    if modalities is not None and modalities != _TEXT_ONLY:
        how = "through the tokenizer's chat template" if "message" in modalities else "other than as plain text"
        raise ModelFolderError(
            f"{st_file}: modality_config {json.dumps(modalities)} has sentence-transformers embed texts {how}; "
            f"this job embeds plain text only (modality_config {json.dumps(_TEXT_ONLY)})"
        )
    for key, plain in (("transformer_task", "feature-extraction"), ("module_output_name", "token_embeddings")):
        if st_config.get(key, plain) != plain:
            raise ModelFolderError(f"{st_file}: {key} {st_config[key]!r} is not supported; only {plain!r}")
    window = st_config.get("max_seq_length")
    for key in ("tokenizer_args", "processor_kwargs", "model_args", "model_kwargs", "config_args", "config_kwargs"):
        arguments = st_config.get(key) or {}
        tokenizer = key in ("tokenizer_args", "processor_kwargs")
        unknown = sorted(set(arguments) - _LOADING_KEYS - ({"model_max_length"} if tokenizer else set()))
        if unknown:
            raise ModelFolderError(
                f"{st_file}: {key} {', '.join(unknown)} would change the model or its tokens and is not supported"
            )
        window = arguments.get("model_max_length", window) if tokenizer else window
    # Its tokenizer call takes the text's arguments, then the common ones over them, whatever their order.
    processing = sorted((st_config.get("processing_kwargs") or {}).items(), key=lambda item: item[0] == "common")
    for modality, arguments in processing:
        unknown = sorted(set(arguments) - {"max_length"}) if modality in ("text", "common") else sorted(arguments)
        if unknown:
            raise ModelFolderError(
                f"{st_file}: processing_kwargs {modality} {', '.join(unknown)} is not supported (only a text or common "
                "max_length is)"
            )
        window = arguments.get("max_length", window)
    return None if window is None else int(window)


def _token_positions(config: dict) -> int:
    positions = int(next((config[k] for k in _POSITION_KEYS if k in config), 1 << 30))
    if config.get("model_type") in _PADDING_OFFSET_POSITIONS:
        pad = config.get("pad_token_id")
        # MPNet's embeddings take padding id 1 whatever its config says.
        positions -= (1 if pad is None or config["model_type"] == "mpnet" else int(pad)) + 1
    return positions


def _static(path: Path) -> StaticEmbeddingSpec:
    _check_weights(path, "model.safetensors embeddings")
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelFolderError(f"{path}: a StaticEmbedding module needs its tokenizer.json")
    truncation = _read_json(tokenizer_file).get("truncation") or {}
    from safetensors import safe_open  # reads the header only

    with safe_open(path / "model.safetensors", framework="numpy") as weights:
        key = "embedding.weight" if "embedding.weight" in weights.keys() else "embeddings"
        if key not in weights.keys():
            raise ModelFolderError(f"{path}/model.safetensors: no embedding.weight or embeddings tensor")
        shape = weights.get_slice(key).get_shape()
    return StaticEmbeddingSpec(path=path, dim=int(shape[-1]), max_seq_length=truncation.get("max_length"))


def _pooling(path: Path) -> PoolingSpec:
    config_file = path / "config.json"
    config = _read_json(config_file)
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key)) or ("mean",)
    if not modes:  # sentence-transformers fails on it too, with torch's "expected a non-empty list"
        raise ModelFolderError(f"{config_file}: pooling_mode names no mode; supported: {', '.join(POOLING_MODES)}")
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported:
        raise ModelFolderError(
            f"{config_file}: pooling mode {', '.join(unsupported)} is not supported; "
            f"supported: {', '.join(POOLING_MODES)}"
        )
    return PoolingSpec(path=path, modes=modes, include_prompt=config.get("include_prompt", True))


def _dense(path: Path) -> DenseSpec:
    config_file = path / "config.json"
    config = _read_json(config_file)
    _check_weights(path, "Dense weights (model.safetensors)")
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh") or ""
    name = activation.rsplit(".", 1)[-1]
    if not activation.startswith("torch.nn.") or name not in ACTIVATIONS:
        raise ModelFolderError(
            f"{config_file}: activation_function {activation!r} is not supported; "
            f"supported: torch.nn {', '.join(ACTIVATIONS)}"
        )
    _check_acts_on_the_sentence_vector(config, config_file)
    return DenseSpec(
        path=path,
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=name,
        use_residual=bool(config.get("use_residual", False)),
    )


def _check_acts_on_the_sentence_vector(config: dict, config_file: Path) -> None:
    """sentence-transformers 6 lets a sentence-level module read and write another feature than the sentence
    vector; another name would leave the vector as it is."""
    for key in ("module_input_name", "module_output_name"):
        if config.get(key) not in (None, "sentence_embedding"):
            raise ModelFolderError(f"{config_file}: {key} {config[key]!r} is not supported; only 'sentence_embedding'")


def _normalize(path: Path) -> NormalizeSpec:
    _check_acts_on_the_sentence_vector(_optional_json(path / "config.json"), path / "config.json")
    return NormalizeSpec(path)


def _layer_norm(path: Path) -> LayerNormSpec:
    _check_weights(path, "LayerNorm weights (model.safetensors)")
    return LayerNormSpec(path=path, dimension=int(_read_json(path / "config.json")["dimension"]))


_READERS = {
    "Transformer": _transformer,
    "StaticEmbedding": _static,
    "Pooling": _pooling,
    "Dense": _dense,
    "LayerNorm": _layer_norm,
    "Normalize": _normalize,
    "Dropout": DropoutSpec,
}


def _check_order(modules: list[ModuleSpec], modules_file: Path) -> None:
    """An input module first, Pooling right after a Transformer, sentence-level modules after."""
    if not modules or not isinstance(modules[0], (TransformerSpec, StaticEmbeddingSpec)):
        raise ModelFolderError(f"{modules_file}: the first module must be a Transformer or a StaticEmbedding")
    if any(isinstance(m, (TransformerSpec, StaticEmbeddingSpec)) for m in modules[1:]):
        raise ModelFolderError(f"{modules_file}: only one Transformer or StaticEmbedding module is supported")
    pooled = isinstance(modules[0], StaticEmbeddingSpec)
    if not pooled and not (len(modules) > 1 and isinstance(modules[1], PoolingSpec)):
        raise ModelFolderError(f"{modules_file}: a Transformer must be followed by a Pooling module")
    if sum(isinstance(m, PoolingSpec) for m in modules) > (0 if pooled else 1):
        raise ModelFolderError(f"{modules_file}: a second Pooling module is not supported")
    width = 0
    for module in modules:
        if isinstance(module, (DenseSpec, LayerNormSpec)):
            expected = module.in_features if isinstance(module, DenseSpec) else module.dimension
            if expected != width:
                raise ModelFolderError(f"{module.path}: expects vectors of width {expected}, gets {width}")
        width = _width_after(module, width)


def module_folder(root: Path, modules_file: Path, entry: object) -> Path:
    """The folder of one `modules.json` entry, refused when it leaves the model folder: its digest
    could not cover what it loads (sentence-transformers refuses such a path too)."""
    path = PurePosixPath(str(entry.get("path", "")) if isinstance(entry, dict) else "")
    if path.is_absolute() or ".." in path.parts:
        raise ModelFolderError(f"{modules_file}: module path {str(path)!r} leaves the model folder")
    return root / path


def read_model_folder(path: str | Path) -> ModelFolder:
    """Describe the sentence-transformers model saved at `path`, or explain why it can't be used: a
    file of it holding other JSON than sentence-transformers and transformers write (a list for an
    object, text for a number) is named as the folder's fault, not left to a traceback."""
    try:
        return _read_model_folder(Path(path))
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as e:
        if isinstance(e, ModelFolderError):
            raise
        raise ModelFolderError(
            f"{path}: a file of the model folder holds values of other types than sentence-transformers writes "
            f"({type(e).__name__}: {e})"
        ) from e


def _read_model_folder(root: Path) -> ModelFolder:
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        raise ModelFolderError(f"{root}: not a sentence-transformers model folder (no modules.json found)")
    modules: list[ModuleSpec] = []
    for entry in _read_json(modules_file):
        module_type = entry.get("type", "")
        kind = module_type.rsplit(".", 1)[-1]
        if not module_type.startswith(_ST_PREFIX) or kind not in _READERS:
            shipped = f" (its code would come from {module_type.rsplit('.', 1)[0]}.py in the folder)"
            raise ModelFolderError(
                f"{modules_file}: module type {module_type!r} is not supported"
                f"{'' if module_type.startswith(_ST_PREFIX) else shipped}; "
                f"supported: {', '.join(SUPPORTED_MODULES)} from sentence_transformers"
            )
        modules.append(_READERS[kind](module_folder(root, modules_file, entry)))
    _check_order(modules, modules_file)
    st_config = _optional_json(root / "config_sentence_transformers.json")
    similarity = st_config.get("similarity_fn_name")
    folder = ModelFolder(
        path=root,
        modules=tuple(modules),
        # A prompt saved as null is none, as sentence-transformers reads it (its defaults are saved so).
        prompts={name: text or "" for name, text in (st_config.get("prompts") or {}).items()},
        default_prompt_name=st_config.get("default_prompt_name"),
        truncate_dim=st_config.get("truncate_dim"),
        similarity=similarity if similarity in SIMILARITIES else "cosine",
    )
    if folder.truncate_dim is not None:
        folder.output_dim()  # the folder's own default must fit too
    if folder.default_prompt_name and folder.default_prompt_name not in folder.prompts:  # as sentence-transformers
        known = ", ".join(sorted(folder.prompts)) or "none"
        raise ModelFolderError(
            f"{root / 'config_sentence_transformers.json'}: default_prompt_name {folder.default_prompt_name!r} "
            f"names no prompt; prompts defined: {known}"
        )
    return folder
