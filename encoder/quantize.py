"""Compact vectors: float16, int8/uint8 over fixed calibrated ranges, or packed sign bits.

As sentence-transformers' `quantize_embeddings` does: int8/uint8 map each dimension's calibrated
[min, max] onto 256 levels (values outside are clipped), `binary` packs the sign bits eight to a
byte, most significant first (its `ubinary`). The ranges come from a calibration file made once
per model (`python -m pipeline.calibrate`) and are never computed per batch, so every night's
vectors are comparable and vectors reused from a previous run stay valid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

VECTOR_DTYPES = ("float32", "float16", "int8", "uint8", "binary")
CALIBRATED = ("int8", "uint8")
LEVELS = 255  # steps between a dimension's calibrated min and max


class CalibrationError(ValueError):
    """A calibration file that is missing, malformed or made for other vectors."""


@dataclass(frozen=True)
class CalibratedModel:
    """What a calibration's ranges were measured with: another model or prompt gives other ranges, and so do
    the same weights under another tokenizer, pooling, Dense head or without Normalize (the folder's digest)."""

    weights_sha256: str
    prompt: str | None
    folder_sha256: str | None = None  # None in files made before it was recorded: then not compared
    # How the texts were cut before embedding ("passages of up to 128 tokens, ..."): not the model's
    # identity, so not among its differences; a run cutting its texts otherwise is warned. None in
    # files made before it was recorded.
    texts_cut: str | None = None

    def differences(self, other: CalibratedModel) -> list[str]:
        """How `other` differs from this, as 'what: this -> other' phrases."""
        differ = []
        if self.weights_sha256 != other.weights_sha256:
            differ.append(f"weights sha256 {self.weights_sha256[:12]} -> {other.weights_sha256[:12]}")
        elif self.folder_sha256 and other.folder_sha256 and self.folder_sha256 != other.folder_sha256:
            differ.append(
                f"model folder sha256 {self.folder_sha256[:12]} -> {other.folder_sha256[:12]} (its tokenizer, "
                "pooling or modules after it)"
            )
        if self.prompt != other.prompt:
            differ.append(f"prompt {self.prompt!r} -> {other.prompt!r}")
        return differ


@dataclass(frozen=True)
class Calibration:
    """Per-dimension ranges of a model's vectors on a calibration set."""

    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    texts: int  # how many texts they were measured on
    # The model and prompt they were measured with; None in files made before they were recorded.
    # Not compared: two calibrations are the same when their ranges are, as their sha256 says.
    made_for: CalibratedModel | None = field(default=None, compare=False)

    @classmethod
    def of(cls, vectors: np.ndarray, made_for: CalibratedModel | None = None) -> Calibration:
        if not len(vectors):
            raise CalibrationError("no vectors to calibrate on")
        calibration = cls(
            tuple(vectors.min(axis=0).tolist()), tuple(vectors.max(axis=0).tolist()), len(vectors), made_for
        )
        calibration._check_width("the calibration texts")
        return calibration

    def _check_width(self, source: str) -> None:
        """Ranges of no width in every dimension (one vector, however many texts) would store every vector
        as the same levels. One dimension of no width is a model's own (a ReLU that never fires)."""
        if self.minimum == self.maximum:
            raise CalibrationError(
                f"{source}: the ranges have no width in any dimension, as of a single text's vector: every vector "
                "would be stored alike; calibrate on texts that differ"
            )

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> Calibration:
        """Parse a calibration file's content; `source` names it in errors."""
        try:
            body = json.loads(text)
            model = body.get("model")
            made_for = (
                None
                if model is None
                else CalibratedModel(
                    str(model["weights_sha256"]), model["prompt"], model.get("folder_sha256"), model.get("texts_cut")
                )
            )
            calibration = cls(
                tuple(map(float, body["min"])), tuple(map(float, body["max"])), int(body["texts"]), made_for
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            why = f"{type(e).__name__}: {e}"  # str, not repr: a binary file's repr holds its bytes
            raise CalibrationError(f"{source}: not a calibration file ({why[:200]})") from e
        if len(calibration.minimum) != len(calibration.maximum) or not calibration.minimum:
            raise CalibrationError(f"{source}: min and max must be lists of the same length")
        ranges = np.array([calibration.minimum, calibration.maximum])
        if not np.isfinite(ranges).all() or (ranges[0] > ranges[1]).any() or calibration.texts < 1:
            raise CalibrationError(f"{source}: min and max must be finite numbers, min <= max, texts at least 1")
        if made_for is not None and not isinstance(made_for.prompt, str | None):
            raise CalibrationError(f"{source}: the model's prompt must be a string or null")
        calibration._check_width(source)
        return calibration

    def _ranges(self) -> dict:
        return {"texts": self.texts, "min": list(self.minimum), "max": list(self.maximum)}

    def to_json(self) -> str:
        body = self._ranges()
        if self.made_for is not None:
            body["model"] = {
                "weights_sha256": self.made_for.weights_sha256,
                "folder_sha256": self.made_for.folder_sha256,
                "prompt": self.made_for.prompt,
                "texts_cut": self.made_for.texts_cut,
            }
        return json.dumps(body)

    @property
    def sha256(self) -> str:
        """Of the ranges alone, which are all that shape the vectors: a file made before the model was
        recorded in it keeps its sha256, and with it the runs' fingerprint."""
        return hashlib.sha256(json.dumps(self._ranges()).encode()).hexdigest()

    def check_model(self, model: CalibratedModel) -> None:
        """Refuse ranges measured with another model or prompt: their levels would clip or waste
        this model's values, silently."""
        differ = self.made_for.differences(model) if self.made_for is not None else []
        if differ:
            raise CalibrationError(
                f"made for another model or prompt ({'; '.join(differ)}): make one for this model with "
                "python -m pipeline.calibrate"
            )


class Float16Overflow(ValueError):
    """Vectors with values past float16's largest, 65504 (a model without Normalize): none is written.
    `positions`: those vectors' places in the quantized batch."""

    def __init__(self, positions: np.ndarray, which: str | None = None) -> None:
        self.positions = positions
        which = which or f"texts {positions[:5].tolist()}"
        super().__init__(
            f"{len(positions)} vectors hold values past float16's range ({which} first); pass --vector_dtype float32"
        )

    def named(self, ids: list) -> Float16Overflow:
        """The same error naming the first vectors by their rows' ids."""
        return Float16Overflow(self.positions, f"ids {ids}")


@dataclass(frozen=True)
class Quantizer:
    """Turns float32 vectors (normalised, truncated) into `dtype`, and back for search and tests."""

    dtype: str = "float32"
    calibration: Calibration | None = None  # int8 and uint8 only

    def __post_init__(self) -> None:
        if self.dtype not in VECTOR_DTYPES:
            raise CalibrationError(f"vector dtype {self.dtype!r}: choose one of {', '.join(VECTOR_DTYPES)}")
        if (self.dtype in CALIBRATED) != (self.calibration is not None):
            raise CalibrationError(f"vector dtype {self.dtype}: a calibration file is needed for int8 and uint8 only")

    @classmethod
    def from_block(cls, block: dict) -> Quantizer:
        """The quantizer a run's model block describes (see `describe`); float32 when it names none."""
        ranges = block.get("calibration")
        calibration = Calibration(tuple(ranges["min"]), tuple(ranges["max"]), ranges["texts"]) if ranges else None
        return cls(block.get("vector_dtype", "float32"), calibration)

    def width(self, dim: int) -> int:
        """Values stored per vector."""
        return (dim + 7) // 8 if self.dtype == "binary" else dim

    def check(self, dim: int) -> None:
        if self.calibration and len(self.calibration.minimum) != dim:
            raise CalibrationError(
                f"the calibration file holds ranges for {len(self.calibration.minimum)} dimensions; "
                f"the vectors have {dim}"
            )

    def _levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Each dimension's first level and the levels' width: 0 where the calibrated range is one value."""
        starts = np.array(self.calibration.minimum, np.float32)
        return starts, (np.array(self.calibration.maximum, np.float32) - starts) / np.float32(LEVELS)

    def quantize(self, vectors: np.ndarray) -> np.ndarray:
        """float32 (rows, dim) -> (rows, width) of numpy's `dtype` (uint8 for binary)."""
        if self.dtype == "float32":
            return vectors
        if self.dtype == "float16":
            with np.errstate(over="ignore"):  # named below
                stored = vectors.astype(np.float16)
            past = np.flatnonzero(~np.isfinite(stored).all(axis=1))
            if len(past):
                raise Float16Overflow(past)
            return stored
        if self.dtype == "binary":
            return np.packbits(vectors > 0, axis=1)
        starts, steps = self._levels()
        # As sentence-transformers: levels one wide where the range has no width.
        levels = np.clip(np.floor((vectors - starts) / np.where(steps > 0, steps, np.float32(1))), 0, LEVELS)
        return (levels - 128).astype(np.int8) if self.dtype == "int8" else levels.astype(np.uint8)

    def clipped(self, vectors: np.ndarray) -> tuple[int, int]:
        """Of float32 `vectors` (rows, dim), the vectors and the values that int8 or uint8 clip: outside the
        calibrated ranges (texts unlike the calibration's); (0, 0) for the other dtypes."""
        if self.dtype not in CALIBRATED:
            return 0, 0
        outside = (vectors < np.array(self.calibration.minimum, np.float32)) | (
            vectors > np.array(self.calibration.maximum, np.float32)
        )
        return int(outside.any(axis=1).sum()), int(outside.sum())

    def dequantize(self, values: np.ndarray, dim: int) -> np.ndarray:
        """Stored values -> float32 (rows, dim): each level's midpoint, or +-1 per sign bit. A dimension
        whose calibrated range is one value reads back as that value."""
        if self.dtype in ("float32", "float16"):
            return values.astype(np.float32)
        if self.dtype == "binary":
            return np.unpackbits(values, axis=1)[:, :dim].astype(np.float32) * 2 - 1
        starts, steps = self._levels()
        levels = values.astype(np.float32) + (128 if self.dtype == "int8" else 0)
        return starts + (levels + np.float32(0.5)) * steps

    def describe(self) -> dict:
        """For the manifest and the files' metadata: enough to dequantize."""
        block = {"vector_dtype": self.dtype}
        if self.calibration:
            block["calibration"] = {
                "sha256": self.calibration.sha256,
                "texts": self.calibration.texts,
                "min": list(self.calibration.minimum),
                "max": list(self.calibration.maximum),
                "levels": LEVELS,
            }
        return block
