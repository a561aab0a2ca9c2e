"""Where a path points: one test of local against object-store paths, and one spelling per local file."""

from __future__ import annotations

import os
import re

from apache_beam.io.filesystems import FileSystems


def is_url(path: str) -> bool:
    """gs://, s3://, hdfs:// and the like: Beam's filesystems, where folders are prefixes of objects."""
    return FileSystems.get_scheme(path) is not None


def same_spelling(path: str) -> str:
    """A local path made absolute and normal, so that a file matched under two spellings
    (`in/a.parquet`, `./in/a.parquet`) is read once; URLs are left as they are."""
    return path if is_url(path) else os.path.abspath(path)


def real_path(path: str, folders: dict[str, str]) -> str:
    """The file a local path names, through links: its folder's real path (cached in `folders`, one
    per folder, where thousands of shards share a few) and the file's own link followed; URLs as they
    are. `kb/a.parquet` and `current/a.parquet`, with current a link to kb, are one file."""
    if is_url(path):
        return path
    folder, name = os.path.split(path)
    if folder not in folders:
        folders[folder] = os.path.realpath(folder)
    joined = os.path.join(folders[folder], name)
    return os.path.realpath(joined) if os.path.islink(joined) else joined


WILDCARD = re.compile(r"[*?\[]")  # where a glob pattern stops spelling a path out
# A glob's pieces: `**`, `*`, `?`, a set (`[a-c]`, `[!x]`, `[]x]`), or characters meant as written.
_GLOB_PIECE = re.compile(r"\*\*|\*|\?|\[[!^]?\]?[^\]]*\]|[^*?\[]+|\[")
_SET_SPECIAL = re.compile(r"([\\\[\]&~|^])")  # escaped in a set: `[[]` is a `[`, not a nested set


def glob_regex(pattern: str) -> re.Pattern:
    """`pattern` as a shell reads a glob, within one name: `*` any characters, `?` one, `[...]` one of a
    set (`[!...]` or `[^...]` one not in it), none of them a `/`; and `**`, as Beam reads it, any characters
    across folders. Beam's own `*` also stops at a backslash (Windows' separator), a character of a name on
    Linux and object storage, so `kb/*.parquet` left `kb/a\\b.parquet` out of a run without a word; and its
    `?` and `[!...]` match a `/`."""
    parts = []
    for piece in _GLOB_PIECE.findall(pattern):
        if piece in ("**", "*", "?"):
            parts.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}[piece])
        elif piece[0] == "[" and len(piece) > (3 if piece[1:2] in ("!", "^") else 2):  # `[`, `[]`, `[!]` as written
            negated = piece[1] in "!^"
            members = _SET_SPECIAL.sub(r"\\\1", piece[2 if negated else 1 : -1])
            parts.append(f"[^/{members}]" if negated else f"(?!/)[{members}]")
        else:
            parts.append(re.escape(piece))
    try:
        return re.compile("(?s)" + "".join(parts) + r"\Z")
    except re.error as e:  # a set no shell reads either: `[z-a]`
        raise ValueError(f"not a glob pattern ({e})") from e


def spelled_pattern(pattern: str) -> str:
    """A pattern as matched: one ending in / names the files in that folder, as Beam reads it; a local one
    made absolute up to its first wildcard's folder (past it, `..` is a name to match, as in a shell), as Beam
    finds nothing for `*.parquet`, with no folder before the wildcard."""
    pattern = f"{pattern}*" if pattern.endswith("/") else pattern
    split = split_at_wildcard(pattern)
    if is_url(pattern) or split is None:
        return same_spelling(pattern)
    folder, rest = split
    return os.path.join(os.path.abspath(folder or "."), rest)


def split_at_wildcard(pattern: str) -> tuple[str, str] | None:
    """A pattern's folder before its first wildcard (`kb/` of `kb/d*/*.parquet`, with its /) and the rest;
    None for a pattern without one."""
    wildcard = WILDCARD.search(pattern)
    if wildcard is None:
        return None
    end = pattern.rfind("/", 0, wildcard.start()) + 1
    return pattern[:end], pattern[end:]


def pattern_reaches(pattern: str, written: str) -> bool:
    """Whether `pattern` (spelled_pattern, glob_regex) takes in the file `written`; local paths made absolute."""
    return glob_regex(spelled_pattern(pattern)).match(same_spelling(written)) is not None


def pattern_reaches_through_links(pattern: str, written: str) -> bool:
    """Whether `pattern` takes in the file `written` as spelled or, for local paths, through links: Beam
    lists the files under a pattern's folder before its first wildcard through the links on the way to it
    (none below it), so `kb/**/*.parquet` takes in `kb-link/nightly/embeddings.parquet` where kb-link is kb."""
    if pattern_reaches(pattern, written):
        return True
    if is_url(pattern) or is_url(written):
        return False
    spelled, real_written = spelled_pattern(pattern), os.path.realpath(written)
    split = split_at_wildcard(spelled)
    if split is None:
        return os.path.realpath(spelled) == real_written
    folder = os.path.realpath(split[0]).rstrip("/") + "/"  # its name may hold `[`: not matched as a glob
    return real_written.startswith(folder) and glob_regex(split[1]).match(real_written[len(folder) :]) is not None


def pattern_may_enter(pattern: str, folder: str) -> bool:
    """Whether files under the local `folder` may match `pattern` (as spelled_pattern spells it): each name of
    the folder's path matches the pattern's name at its depth, up to one holding `**`, which crosses folders
    after what comes before it."""
    names, parts = pattern.split("/"), folder.rstrip("/").split("/")
    for name, part in zip(names, parts, strict=False):
        if "**" in name:  # what comes before it matches the start of this name
            return glob_regex(name[: name.index("**")] + "*").match(part) is not None
        if glob_regex(name).match(part) is None:
            return False
    return len(names) > len(parts)


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
