"""A sentence-transformers compatible pooled encoder on torch + transformers.

Nothing here knows about Beam: the pipeline's embed transform drives it.
"""

from encoder.model_folder import ModelFolder, ModelFolderError, read_model_folder
from encoder.pooled_encoder import Encoded, PooledEncoder

__all__ = [
    "Encoded",
    "ModelFolder",
    "ModelFolderError",
    "PooledEncoder",
    "read_model_folder",
]
