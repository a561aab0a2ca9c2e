"""Where a path points: one test of local against object-store paths, and one spelling per local file."""

from __future__ import annotations

import os
import re

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems


def is_url(path: str) -> bool:
    """gs://, s3://, hdfs:// and the like: Beam's filesystems, where folders are prefixes of objects."""
    return FileSystems.get_scheme(path) is not None


def same_spelling(path: str) -> str:
    """A local path made absolute and normal, so that a file matched under two spellings
    (`in/a.parquet`, `./in/a.parquet`) is read once; URLs are left as they are."""
    return path if is_url(path) else os.path.abspath(path)


# How Beam's glob translation spells `*`: any characters but a slash or a backslash (Windows' separator).
_BEAM_STAR = r"[^/\\]*"


def glob_regex(pattern: str) -> re.Pattern:
    """`pattern` as Beam's matching reads it (`*` within a folder, `**` across folders), but for `*` stopping at
    `/` alone: on Linux and object storage a backslash is a character of a name, and Beam's `kb/*.parquet` left a
    file named `a\\b.parquet` out of a run without a word."""
    return re.compile(FileSystem.translate_pattern(pattern).replace(_BEAM_STAR, "[^/]*"))


def pattern_reaches(pattern: str, written: str) -> bool:
    """Whether `pattern` (glob_regex) takes in the file `written`; local paths compared made absolute."""
    return glob_regex(same_spelling(pattern)).match(same_spelling(written)) is not None


def same_place(a: str, b: str) -> bool:
    """Whether two folders are one: URLs as written, local paths through their links."""
    if is_url(a) or is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def not_a_folder(path: str) -> str | None:
    """Why `path` cannot be a run's output folder, when that is the reason it holds no manifest:
    it is a file (a run's manifest.json, say), or nothing is there."""
    if FileSystems.exists(path) and (is_url(path) or not os.path.isdir(path)):
        return "it is a file, not a folder: pass the folder holding the run's files"
    if not FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list:
        return "nothing is there: check the path"
    return None
