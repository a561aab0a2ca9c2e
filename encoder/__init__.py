"""A sentence-transformers compatible pooled encoder on torch + transformers.

Nothing here knows about Beam: the pipeline's embed transform drives it.
Models load from local folders only; the Hugging Face hub is switched off
before transformers is imported, so nothing is ever downloaded at run time.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from encoder.model_folder import ModelFolder, ModelFolderError, read_model_folder  # noqa: E402


def __getattr__(name: str) -> object:
    """The encoder itself, imported on first use: torch and transformers take about 1.5 s to
    import, and the launcher, which plans and builds the pipeline, needs neither."""
    if name in ("Encoded", "PooledEncoder"):
        from encoder import pooled_encoder

        return getattr(pooled_encoder, name)
    raise AttributeError(f"module 'encoder' has no attribute {name!r}")


__all__ = [
    "Encoded",
    "ModelFolder",
    "ModelFolderError",
    "PooledEncoder",
    "read_model_folder",
]
