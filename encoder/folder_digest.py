"""One sha256 over every file of a model folder that shapes its vectors.

The weights alone are not enough: a changed tokenizer, transformer config, pooling
mode, Dense layer or prompt gives other vectors for the same text, so yesterday's
vectors must not be reused and a cached copy of the folder must not be used. The
digest covers every file directly in the folder and in each module folder that
`modules.json` lists. Documentation (`*.md`, licences, `.gitattributes`) and weights
in formats the job never loads (pickle, TensorFlow, Flax, ONNX, in folders such as
`onnx/` that no module lists) are left out, so editing a model card changes nothing.
A module path that leaves the folder is refused: the digest could not cover what it loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from encoder.model_folder import module_folder

_IGNORED_SUFFIXES = (".md", ".bin", ".h5", ".msgpack", ".onnx", ".ot", ".pt", ".pth")
_IGNORED_NAMES = (".gitattributes",)


def _module_dirs(root: Path) -> list[Path]:
    modules_file = root / "modules.json"
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [root]
    folders = {root}
    for module in modules if isinstance(modules, list) else []:
        folders.add(module_folder(root, modules_file, module))
    return sorted(folders)


def shaping_files(root: Path) -> list[Path]:
    """The files the digest covers, sorted by their path relative to `root`."""
    found = set()
    for folder in _module_dirs(Path(root)):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name = path.name
            if not path.is_file() or name in _IGNORED_NAMES or name.upper().startswith("LICENSE"):
                continue
            if name.lower().endswith(_IGNORED_SUFFIXES):
                continue
            found.add(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def folder_sha256(root: str | Path) -> str:
    """sha256 over each shaping file's relative path, size and contents, in path order."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in shaping_files(root):
        relative = path.relative_to(root).as_posix().encode()
        digest.update(len(relative).to_bytes(8, "big") + relative + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
