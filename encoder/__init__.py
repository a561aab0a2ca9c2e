"""A sentence-transformers compatible pooled encoder on torch + transformers.

Nothing here knows about Beam: the pipeline's embed transform drives it.
Models load from local folders only; the Hugging Face hub is switched off
before transformers is imported, so nothing is ever downloaded at run time.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from encoder.model_folder import ModelFolder, ModelFolderError, read_model_folder  # noqa: E402
from encoder.pooled_encoder import Encoded, PooledEncoder  # noqa: E402

__all__ = [
    "Encoded",
    "ModelFolder",
    "ModelFolderError",
    "PooledEncoder",
    "read_model_folder",
]
