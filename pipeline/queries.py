"""Queries embedded as a run embedded its documents, to search the vectors it wrote.

A run's vectors compare only with queries embedded by the same model folder, cut to the same
dimension and length; its manifest records all three. Asymmetric models (E5, BGE, embeddinggemma,
Qwen3-Embedding) embed queries with their `query` prompt, as sentence-transformers' `encode_query`
does: a query embedded with the documents' prompt, or none, ranks worse, without any error to say so.

    from pipeline.queries import query_encoder
    encoder = query_encoder("kb-embeddings")
    vectors = encoder.encode(["how often are backups taken?"]).embeddings
"""

from __future__ import annotations

import os

from encoder import ModelFolderError, PooledEncoder
from pipeline.load import read_manifest
from transforms.model_store import DEFAULT_MODEL_NAME, model_folder
from transforms.paths import is_url

# The prompt sentence-transformers' encode_query takes; where the model defines none, no prompt (not its default).
QUERY_PROMPT = "query"


def query_encoder(
    run: str,
    model: str | None = None,
    device: str = "auto",
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> PooledEncoder:
    """An encoder for queries against the run in folder `run`: its model folder, refused when its files
    are not those the run embedded with (the manifest's `model.folder_sha256`); its max_seq_length and
    vector width (`model.dim`); and the model's `query` prompt where it has one, else none (not its default
    prompt: sentence-transformers' encode_query does not fall back to it), unless `prompt_name` or `prompt`
    says otherwise. `model`: where that folder is now (by default where the run read it, the packaged
    default for the default model). Vectors come back in float32 whatever
    the run's --vector_dtype, normalised as the run's were."""
    written = read_manifest(run)["model"]
    named = None if written["name"] == DEFAULT_MODEL_NAME else written["name"]
    try:
        folder = model_folder(
            model or named,
            written.get("folder_sha256"),
            f"the folder run {run} embedded its documents with, by its manifest's model.folder_sha256",
        )
    except ModelFolderError as e:
        if model or named is None or is_url(named) or os.path.isabs(named):
            raise
        raise ModelFolderError(
            f"{e} (run {run} names its model folder {named!r}, relative to the folder it ran in: pass model= "
            "where that folder is)"
        ) from e
    if prompt_name is None and prompt is None:
        if QUERY_PROMPT in folder.prompts:
            prompt_name = QUERY_PROMPT
        else:
            prompt = ""
    return PooledEncoder(
        folder,
        device,
        max_seq_length=written.get("max_seq_length"),
        prompt_name=prompt_name,
        prompt=prompt,
        truncate_dim=written["dim"],  # the run's width: null truncate_dim there is the whole vector, not the folder's
    )
