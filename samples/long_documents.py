"""Make a corpus of real long documents as Parquet shards, offline, from what is installed.

Passage splitting needs documents longer than the model's 256 tokens, and lorem ipsum or
generated sentences tokenise unlike real prose (markdown, code blocks, URLs, legal text).
This module gathers real ones from the running Python environment, with no network:

- the long descriptions (READMEs) of installed distributions, sorted by name;
- the license files they ship (`*.dist-info/LICENSE*`, `*.dist-info/licenses/*`);
- long standard-library module docstrings (argparse, configparser, re, pdb, ...).

Identical texts (the same license shipped by many packages) are kept once. The corpus is
the same on every call in the same environment.

    python -m samples.long_documents --output long-docs --docs 200 --shards 4
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STDLIB_MODULES = [
    "argparse",
    "cmd",
    "configparser",
    "csv",
    "email",
    "fileinput",
    "hashlib",
    "json",
    "pdb",
    "pyclbr",
    "re",
    "shelve",
    "site",
    "socketserver",
    "ssl",
    "statistics",
    "sys",
    "typing",
    "wave",
]
LICENSE_PREFIXES = ("license", "licence", "copying", "notice")


def _clean(text: str) -> str:
    return text.replace("\x00", "").strip()


def _descriptions() -> list[tuple[str, str]]:
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if name and name not in found:
            found[name] = _clean(str(text))
    return [(f"readme: {name}", found[name]) for name in sorted(found, key=str.lower)]


def _licenses() -> list[tuple[str, str]]:
    docs = []
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        for file in sorted(dist.files or [], key=str):
            parts = file.parts
            in_dist_info = len(parts) >= 2 and parts[0].endswith(".dist-info")
            if not in_dist_info or not (parts[-1].lower().startswith(LICENSE_PREFIXES) or "licenses" in parts[1:-1]):
                continue
            try:
                text = Path(dist.locate_file(file)).read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            docs.append((f"license: {dist.metadata['Name']}/{'/'.join(parts[1:])}", _clean(text)))
    return docs


def _docstrings() -> list[tuple[str, str]]:
    docs = []
    for name in STDLIB_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except ImportError:
            continue
        docs.append((f"docstring: {name}", _clean(module.__doc__ or "")))
    return docs


@cache
def _corpus(min_chars: int) -> tuple[tuple[str, str], ...]:
    seen, docs = set(), []
    for name, text in [*_descriptions(), *_licenses(), *_docstrings()]:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        if len(text) >= min_chars and digest not in seen:
            seen.add(digest)
            docs.append((name, text))
    return tuple(docs)


def long_documents(min_chars: int = 2000) -> list[tuple[str, str]]:
    """(name, text) pairs of real documents of at least `min_chars` characters, in a fixed order."""
    return list(_corpus(min_chars))


def text_of_size(chars: int, min_chars: int = 2000) -> str:
    """One real text of exactly `chars` characters: the corpus's documents one after another, repeated."""
    corpus = "\n\n".join(text for _, text in long_documents(min_chars))
    return (corpus * (chars // len(corpus) + 1))[:chars]


def make_documents(docs: int, seed: int = 0, start_id: int = 0, min_chars: int = 2000) -> pa.Table:
    """`docs` rows (id, title, text) drawn from the corpus, cycling through it when more are asked for.

    The seed shuffles the order of each pass. Passes after the first rotate each document's
    paragraphs (start at its k-th paragraph, wrap around) so repeated documents are different
    texts made only of real paragraphs.
    """
    corpus = long_documents(min_chars)
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str]] = []
    cycle = 0
    while len(rows) < start_id + docs:
        for index in rng.permutation(len(corpus)):
            name, text = corpus[index]
            if cycle:
                paragraphs = text.split("\n\n")
                shift = cycle % len(paragraphs)
                text = "\n\n".join(paragraphs[shift:] + paragraphs[:shift])
            rows.append((name, text))
        cycle += 1
    rows = rows[start_id : start_id + docs]
    return pa.table(
        {
            "id": [f"doc-{i:05d}" for i in range(start_id, start_id + docs)],
            "title": [name for name, _ in rows],
            "text": [text for _, text in rows],
        }
    )


def write_documents(output: Path, docs: int, shards: int, seed: int = 0) -> list[Path]:
    """Write `docs` long documents over `shards` files `part-SSSSS.parquet` in `output`."""
    output.mkdir(parents=True, exist_ok=True)
    table = make_documents(docs, seed)
    paths = []
    for shard, part in enumerate(np.array_split(np.arange(docs), shards)):
        paths.append(output / f"part-{shard:05d}.parquet")
        pq.write_table(table.slice(int(part[0]) if len(part) else 0, len(part)), paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="Directory for part-*.parquet.")
    parser.add_argument("--docs", type=int, default=200, help="Documents in all (default: 200).")
    parser.add_argument("--shards", type=int, default=4, help="Parquet files to spread them over (default: 4).")
    parser.add_argument("--seed", type=int, default=0, help="Shuffles the order; the same seed makes the same data.")
    parser.add_argument("--min_chars", type=int, default=2000, help="Shortest document kept (default: 2000).")
    args = parser.parse_args()
    corpus = long_documents(args.min_chars)
    paths = write_documents(args.output, args.docs, args.shards, args.seed)
    print(
        f"wrote {args.docs} documents in {len(paths)} shards to {args.output} "
        f"(corpus: {len(corpus)} distinct documents, {sum(len(t) for _, t in corpus)} characters)"
    )


if __name__ == "__main__":
    main()
