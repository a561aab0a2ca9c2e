"""Everything decided before the pipeline is built, checked where a mistake is cheap to report.

A pattern that matches nothing, a first shard without the columns asked for,
an unusable model folder or an output directory holding an earlier run all
fail here, in seconds, before any worker starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import stat
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from tokenizers import Tokenizer

from encoder import ModelFolder, ModelFolderError
from encoder.devices import cuda_available, resolve_dtype
from encoder.folder_digest import folder_sha256
from encoder.model_folder import TransformerSpec
from encoder.passages import MIN_CONTENT_TOKENS, PassageSplitter, overlap_limit
from encoder.quantize import CALIBRATED, CalibratedModel, Calibration, CalibrationError, Quantizer
from encoder.tokens import TextTokenizer
from pipeline.options import (
    DEFAULT_CHUNK_OVERLAP,
    DEVICES,
    EmbedOptions,
    UsageError,
    carry_columns_value,
    column_names,
)
from schemas.inputs import (
    InputColumns,
    InputError,
    check_shard,
    holds_decimal256,
    holds_null,
    input_columns,
    may_widen,
    one_family,
    quoted,
    type_holding_both,
    typed_by_values,
)
from schemas.outputs import PASSAGE_FIELDS, check_column_names, check_previous_file, has_passages, written_columns
from transforms.embed import EncoderHandler
from transforms.id_buckets import bucketable
from transforms.model_store import DEFAULT_MODEL_NAME, model_folder
from transforms.output_owner import OutputOwner, unfinished_run
from transforms.passages import Chunking
from transforms.paths import (
    WILDCARD,
    glob_regex,
    is_url,
    not_a_folder,
    pattern_may_enter,
    pattern_reaches,
    pattern_reaches_through_links,
    real_path,
    same_place,
    same_spelling,
    spelled_pattern,
    split_at_wildcard,
)
from transforms.read import PlannedFile, one_line, open_parquet
from transforms.write import CHANGE_KINDS, CHANGES_DIR, MANIFEST, output_files, remove_temp_files

_LOG = logging.getLogger(__name__)
_EXTENSION = re.compile(r"\.\w+$")  # a name that ends as a file type's: `*.parquet`, `part-*.pq`
# Claims (id, row, chunk, place and content hash: about 100 bytes each) settled at once in one process.
ROWS_PER_JOIN_BUCKET = 250_000
MIN_JOIN_BUCKETS, MAX_JOIN_BUCKETS = 4, 4096
INT64_MAX = 2**63 - 1
MAX_FOOTERS = 10_000  # input files whose footers a local run reads to show its progress against a total
FOOTER_THREADS = 16  # footers read at once: on object storage each is a round trip or two
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "PrismRunner")
# Files of each kind a run writes in --output (one of each name's shape): no --input pattern may take them in.
WRITTEN_EXAMPLES = tuple(
    f"{name}-00000-of-00001.parquet"
    for name in (
        "embeddings",
        "embeddings-reused-merged",
        "rejected",
        *(f"{CHANGES_DIR}/{kind}" for kind in CHANGE_KINDS),
    )
)
# What makes two runs' vectors for the same text interchangeable.
FINGERPRINT_KEYS = (
    "weights_sha256",
    "folder_sha256",
    "modules",
    "truncate_dim",
    "pooling",
    "normalized",
    "max_seq_length",
    "dtype",
    "prompt",
    "include_prompt",
    "lower_case",
)
# With passages, also how texts are split; they stay out of the fingerprint of runs without passages,
# so that those keep reusing earlier outputs.
CHUNKING_KEYS = ("chunk_tokens", "chunk_overlap", "splitter")
# How vectors are stored; float32, the default, stays out of the fingerprint, so that runs made
# before --vector_dtype existed keep being reused.
VECTOR_KEYS = ("vector_dtype", "calibration")
# The version of the splitting rules: it changes whenever the same settings would split a text differently.
# passages-2 (2026-12-08): where the prompt's last token merges into a text's first word (E5's `passage: `
# with a byte-level or sentencepiece tokenizer), a document the model counts as fitting, prompt and all,
# is one passage (a first word one token fewer after the prompt's space cut it in two). Other runs split
# as before: they keep passages-1, and their passages' vectors.
SPLITTER_VERSIONS = {False: "passages-1", True: "passages-2"}  # by Chunking.prompt_merges
# The prompts sentence-transformers' encode_document takes, the first the model defines (Qwen3-Embedding's
# `document` is empty: its documents go without one).
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
# Recorded only for the models two encoder fixes (2026-12-04) gave other vectors: their runs from before
# are re-embedded once, not reused every night, and every other model's fingerprint stays as it was.
# token_types: the type ids the tokenizer gives a one-token text, where one is not 0 (XLNet's final <cls>
# is 2), which reach the model since; prompt_tokens: with include_prompt false, the prompt tokens pooling
# leaves out where the prompt alone overflows the window (measured uncut, they were every token: zero vectors).
# split_special_tokens (2026-12-05): set by the tokenizer's config, under which a text's special-token strings
# are text; the job's copies of the tokenizer had read them as the special tokens.
ENCODER_FIX_KEYS = ("token_types", "prompt_tokens", "split_special_tokens")


@dataclass(frozen=True)
class PreviousRun:
    path: str
    run_id: str | None  # None for runs of versions that wrote none
    files: list[PlannedFile]  # its embeddings files, as its manifest lists them
    # The columns it wrote besides id, chunk, content hash and vector, typed as in its first
    # embeddings file (null where it wrote none: it reused or embedded no row).
    columns: tuple[pa.Field, ...]
    reuse: bool  # same model fingerprint: its vectors can be carried over
    passages: bool  # its rows are passages, with a chunk column
    id_type: pa.DataType | None  # its ids' type, in a file that holds rows; None where none does
    rows: int  # in its embeddings files, as its manifest counts them (older ones: the first file's, per file)


@dataclass(frozen=True)
class JobPlan:
    patterns: list[str]
    input_files: list[PlannedFile]  # what the patterns matched, each file once
    columns: InputColumns
    handler: EncoderHandler
    rows_per_batch: int
    max_file_bytes: int  # each output file is closed once it holds this much
    join_buckets: int  # groups of ids the join settles apart, each in one process
    progress_interval: float
    progress_total: int | None  # rows that will go through the model, when known before the run
    text_bytes: int | None  # the inputs' text uncompressed, where the footers were read before the run
    previous: PreviousRun | None
    chunking: Chunking | None  # None: one vector per row, truncated
    header: dict  # the manifest's fixed part: model block, inputs, options, start time
    owner: OutputOwner  # on the output directory; taken unless the plan is all that was asked for

    @property
    def output(self) -> str:
        return self.owner.output

    @property
    def model_block(self) -> dict:
        return self.header["model"]


def _split_patterns(value: str | None) -> list[str]:
    patterns = [p.strip() for p in (value or "").split(",") if p.strip()]
    if not patterns:
        raise InputError("--input is required: a Parquet file, a glob, or a comma-separated list of them")
    return patterns


def match_inputs(patterns: list[str], listing: _Listing | None = None) -> list[PlannedFile]:
    """All files the patterns match, in order, each once under the path the rejects name it by
    (`transforms.paths.same_spelling`), its first; a file two spellings reach through a link too, whose
    rows were read twice and rejected as duplicates of themselves. Each pattern must match a file.
    `listing`: the plan's, which keeps what it found for the output's check."""
    listing = listing or _Listing()
    matched: dict[str, PlannedFile] = {}  # by the file's real path
    spellings: set[str] = set()  # every spelling matched, whose datasets' files were read
    folders: dict[str, str] = {}
    for pattern in patterns:
        found = listing.match(pattern)
        if not found:
            _check_spelled_out(pattern)
            _check_datasets_read(listing, pattern, set(), f"{pattern}/**")
            if WILDCARD.search(pattern) is None and _names_a_folder(listing, pattern):
                raise InputError(_a_folder(listing, pattern))
            raise InputError(f"no file matches --input pattern {pattern!r}")
        if len(found) == 1 and not is_url(pattern) and os.path.isdir(found[0].path):
            _check_spelled_out(pattern)
            raise InputError(_a_folder(listing, pattern))
        spelled = spelled_pattern(pattern)
        hidden = sorted(m.path for m in found if is_hidden(m.path, spelled))
        if len(hidden) == len(found):
            raise InputError(
                f"--input pattern {pattern!r} matches only files whose names start with _ or . ({hidden[0]}"
                f"{', ...' if len(hidden) > 1 else ''}): markers, checksums and work folders, not data"
            )
        if hidden:
            _LOG.info(
                "--input %s: %d file(s) passed over whose names start with _ or . (%s%s), as Spark and pyarrow do",
                pattern, len(hidden), hidden[0], ", ..." if len(hidden) > 1 else "",
            )  # fmt: skip
        passed_over = set(hidden)
        for m in sorted((m for m in found if m.path not in passed_over), key=lambda m: m.path):
            path = same_spelling(m.path)
            if not is_url(path) and _special(path):  # opening a pipe waits for a writer: the plan would hang
                raise InputError(f"{path}: a pipe, socket or device, not a Parquet file (matched by --input {pattern})")
            spellings.add(path)
            matched.setdefault(real_path(path, folders), PlannedFile.found(path, m))
    for pattern in patterns:
        _check_datasets_read(listing, pattern, spellings, f"{pattern},{pattern}/**")
    return list(matched.values())


class _Listing:
    """The files patterns match (transforms.paths.glob_regex), as Beam's file systems list them: every file
    under a pattern's literal prefix, at every depth, each prefix listed once for every pattern sharing it
    (`kb/*.parquet,kb/*.parquet/**` and the folders' check), where a bucket prefix holding years of outputs
    took a listing per pattern. Object names ending in / are folder placeholders (the Cloud Console's
    "Create folder", Hadoop's connector), not files."""

    def __init__(self) -> None:
        self._prefixes: dict[str, list[FileMetadata]] = {}
        self._walked: dict[str, _Walked] = {}  # by the local folder before a pattern's first wildcard
        self._linked: dict[str, _Linked] = {}  # by the local pattern

    def match(self, pattern: str, named: str | None = None, whole: bool = True) -> list[FileMetadata]:
        """The files `pattern` matches (transforms.paths.glob_regex), local ones under absolute paths.
        `named`: the --input pattern messages name, where `pattern` is one the job made from it. `whole`:
        whether files the listing passed over fail it (_check_read_whole); not where the job only looks
        what a folder holds to say which pattern to pass instead."""
        named, pattern = named or pattern, spelled_pattern(pattern)
        wildcard = WILDCARD.search(pattern)
        if wildcard is None:
            found = self._listed(pattern, named)
        else:
            prefix = pattern[: wildcard.start()]
            if prefix not in self._prefixes:
                self._prefixes[prefix] = self._listed(f"{prefix}**", named)
            try:
                regex = glob_regex(pattern)
            except ValueError as e:
                raise InputError(f"--input {named}: {e}") from e
            linked = self.linked(pattern)
            if whole and not is_url(pattern):
                self._check_read_whole(named, pattern, regex, [*self._walk(pattern).unreadable, *linked.unreadable])
            found = [m for m in [*self._prefixes[prefix], *linked.files] if regex.match(m.path)]
        return [m for m in found if not m.path.endswith("/")]

    def linked(self, pattern: str) -> _Linked:
        """What `pattern` (spelled as the job spells it, with a wildcard) reaches through links to folders
        (_through_links), found once for the listing and the output's check; none on object storage."""
        if is_url(pattern):
            return _Linked([], [], [])
        if pattern not in self._linked:
            self._linked[pattern] = _through_links(pattern, self._walk(pattern).links)
        return self._linked[pattern]

    def _walk(self, pattern: str) -> _Walked:
        """The local folder before `pattern`'s first wildcard, walked once for every pattern under it."""
        top = split_at_wildcard(pattern)[0]
        if top not in self._walked:
            self._walked[top] = _walk(top)
        return self._walked[top]

    @staticmethod
    def _check_read_whole(named: str, pattern: str, regex: re.Pattern, unreadable: list[Unreadable]) -> None:
        """The files `pattern` may match in a folder Beam's listing passed over, or through a link that
        cannot be followed, would be left out of the run, and their rows out of the table the night loads."""
        for place in unreadable:
            if is_hidden(os.path.join(place.path, "file"), pattern):
                continue
            if place.link and regex.match(place.path):
                raise InputError(
                    f"--input {named}: cannot read {place.path}, a link to {os.readlink(place.path)} ({place.why}), "
                    "which the pattern matches; mend or remove the link, or write the pattern so that it does not "
                    "match it"
                )
            if place.link and pattern_may_enter(pattern, place.path):  # a folder's, whose mount is gone, say
                if any("**" in name for name in pattern.split("/")[: place.path.count("/") + 1]):
                    _LOG.warning(  # among all a `**` crosses: a stale link to a file as likely
                        "--input %s: passed over %s, a link to %s (%s): if it was a folder's, its files are left out",
                        named, place.path, os.readlink(place.path), place.why,
                    )  # fmt: skip
                    continue
                raise InputError(
                    f"--input {named}: cannot read {place.path}, a link to {os.readlink(place.path)} ({place.why}), "
                    "where the pattern may match files; mend or remove the link, or write the pattern so that it "
                    "does not reach it"
                )
            if not place.link and pattern_may_enter(pattern, place.path):
                raise InputError(
                    f"--input {named}: cannot read the folder {place.path} ({place.why}), where the pattern may match "
                    "files; make it readable to this job, or write the pattern so that it does not reach it"
                )

    @staticmethod
    def _listed(pattern: str, named: str) -> list[FileMetadata]:
        try:
            return FileSystems.match([pattern])[0].metadata_list
        except OSError as e:  # Beam's BeamIOError: a bucket that does not exist, no permission to list
            raise InputError(f"--input {named}: cannot be listed ({one_line(e)})") from e
        except ValueError as e:  # a scheme no installed file system reads (file://, s3:// without Beam's aws extra)
            if named.startswith("file://"):
                raise InputError(f"--input {named}: write a local file's path without file://") from e
            raise InputError(f"--input {named}: cannot be listed ({one_line(e)})") from e


class Unreadable(NamedTuple):
    """A place under a local pattern's folder whose files Beam's listing passes over, and why."""

    path: str
    why: str
    link: bool  # a link among a folder's files that cannot be followed, rather than a folder


class _Walked(NamedTuple):
    """What a walk of a local folder found (_walk)."""

    unreadable: list[Unreadable]
    links: list[str]  # the links to folders, none entered
    files: list[FileMetadata]  # every file, where asked for


def _walk(top: str, files: bool = False) -> _Walked:
    """The places under a local folder (a pattern's before its wildcard: `/kb/`) whose files Beam's listing
    passes over: a folder it cannot list (os.walk's default skips it), one it can list but not enter (no x
    permission), whose files it cannot stat; and the links among their files it cannot follow (the target
    gone, or in a folder it cannot enter), which it passes over as it does a file gone since listed. One gone
    since it was seen (a writer's work folder, cleaned up) holds no files to miss; a `lost+found` folder, a
    file system's own (on a disk's root), none of the job's: none under it is named, though the walk enters it
    as Beam's listing does. With them, the links to folders, which are not entered, as Beam's listing enters
    none (those the pattern's names match: _through_links), and with `files` every file, as Beam lists a
    folder. One walk, with os.scandir, whose entries say which are links without a stat each: a `**`
    pattern's tree was walked three times by the plan besides Beam's listing."""
    walked = _Walked([], [], [])
    pending = [(top, False)]  # a folder, and whether it is in a lost+found
    while pending:
        folder, lost = pending.pop()
        unreadable = [] if lost else walked.unreadable
        try:
            with os.scandir(folder) as listed:
                entries = list(listed)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            unreadable.append(Unreadable(_not_entered(folder), e.strerror, link=False))
            continue
        try:
            if entries:
                os.lstat(entries[0].path)
        except PermissionError as e:
            unreadable.append(Unreadable(folder.rstrip("/") or "/", e.strerror, link=False))
            continue
        except OSError:  # gone since the folder was listed
            pass
        for entry in entries:
            if entry.is_symlink():
                try:
                    status = os.stat(entry.path)
                except OSError as e:
                    unreadable.append(Unreadable(entry.path, e.strerror, link=True))
                    continue
                if stat.S_ISDIR(status.st_mode):
                    walked.links.append(entry.path)
                elif files:
                    walked.files.append(FileMetadata(entry.path, status.st_size, status.st_mtime))
            elif entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, lost or entry.name == "lost+found"))
            elif files:
                with contextlib.suppress(OSError):  # gone since it was listed
                    status = entry.stat(follow_symlinks=False)
                    walked.files.append(FileMetadata(entry.path, status.st_size, status.st_mtime))
    walked.unreadable.sort()
    return walked


class _Linked(NamedTuple):
    """What a local pattern reaches through links to folders (_through_links)."""

    files: list[FileMetadata]
    unreadable: list[Unreadable]  # the places among them the job cannot read
    followed: list[tuple[str, str, int]]  # each link followed, the real path of its folder, the depth of its names


def _through_links(pattern: str, links: list[str]) -> _Linked:
    """The files a local pattern may match through links to folders, which Beam's listing enters none of, as
    bash's glob reaches them: a link that a name of the pattern below its first wildcard matches is followed
    (`kb/*/*.parquet`, kb/team-a a link to a folder elsewhere); a `**` crosses no link, but the names after
    it are looked for in each link to a folder among those it crosses (`kb/**/*.parquet` takes in
    kb/x/team-a/a.parquet, not kb/x/team-a/deep/d.parquet), and a trailing one enters none; at a `**` under
    a followed link every file is taken in, as Beam lists a folder. A link is entered only where a name
    leads into it, so no loop of links is gone round. With them, the places reached through links that the
    job cannot read (as _walk finds them elsewhere; `lost+found` passed over), and the links followed.
    `links`: the links to folders under the pattern's folder before its wildcard, entering none (_walk)."""
    top, rest = split_at_wildcard(pattern)
    names = rest.split("/")
    regexes = [None if "**" in name else glob_regex(name) for name in names]
    found = _Linked([], [], [])
    files, unreadable = found.files, found.unreadable
    pending = [(top.rstrip("/") or "/", 0, False)]  # a folder, the depth of its entries' name, through a link
    while pending:
        folder, depth, linked = pending.pop()
        if linked and os.path.islink(folder):
            found.followed.append((folder, os.path.realpath(folder), depth))
        regex = regexes[depth]
        if regex is None and linked:
            under = _walk(folder, files=True)
            files += under.files
            unreadable += under.unreadable
        if regex is None:
            if not linked and depth < len(names) - 1:
                below = folder.rstrip("/") + "/"
                pending += [(link, depth + 1, True) for link in links if link.startswith(below)]
            continue
        try:
            with os.scandir(folder) as listed:
                entries = [entry for entry in listed if regex.match(entry.name)]
            if linked and entries:  # a folder that can be listed but not entered: its entries cannot be read
                os.lstat(entries[0].path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            if linked:  # elsewhere, _walk names it
                unreadable.append(Unreadable(_not_entered(folder), e.strerror, link=False))
            continue
        last = depth == len(names) - 1
        for entry in entries:
            try:
                is_folder, is_file = entry.is_dir(), entry.is_file()  # through a link
            except OSError:
                is_folder = is_file = False
            if is_folder and not last and entry.name != "lost+found":
                pending.append((entry.path, depth + 1, linked or entry.is_symlink()))
            elif is_file and linked and last:
                with contextlib.suppress(OSError):  # gone since it was listed
                    status = entry.stat()
                    files.append(FileMetadata(entry.path, status.st_size, status.st_mtime))
            elif linked and entry.is_symlink() and not (is_folder or is_file):
                try:
                    os.stat(entry.path)
                except OSError as e:  # its target gone, or in a folder the job cannot enter
                    unreadable.append(Unreadable(entry.path, e.strerror, link=True))
    return found


def _takes_in(pattern: str, path: str, followed: list[tuple[str, str, int]]) -> bool:
    """Whether `pattern` takes in `path`, spelled as it is, through the links on the way to the pattern's
    first wildcard, or through a link to a folder the pattern follows below it (`followed`, its
    _through_links'): `kb/*/*/*.parquet` takes in elsewhere/team-a/out/x.parquet where kb/team-a is a link
    to elsewhere/team-a."""
    if pattern_reaches_through_links(pattern, path):
        return True
    if not followed:  # a pattern without a wildcard, or one on object storage, follows none
        return False
    real = os.path.realpath(path)
    names = split_at_wildcard(spelled_pattern(pattern))[1].split("/")
    for _, target, depth in followed:
        folder = target.rstrip("/") + "/"
        if real.startswith(folder) and _names_take_in(names[depth:], real[len(folder) :].split("/")):
            return True
    return False


def _names_take_in(names: list[str], parts: list[str]) -> bool:
    """Whether a pattern's names match a path's parts as the listing matches them below a followed link:
    one to a folder, up to a `**`, under which every file is listed for the rest to match."""
    for at, (name, part) in enumerate(zip(names, parts, strict=False)):
        if "**" in name:
            return glob_regex("/".join(names[at:])).match("/".join(parts[at:])) is not None
        if glob_regex(name).match(part) is None:
            return False
    return len(names) == len(parts)


def _not_entered(path: str) -> str:
    """`path`, or the folder above it whose permissions keep the job from reaching it."""
    path = path.rstrip("/") or "/"
    while path != "/":
        try:
            os.stat(path)
        except PermissionError:
            path = os.path.dirname(path)
            continue
        except OSError:  # a link looping on itself: named, with why, as it is
            pass
        return path
    return path


def _check_spelled_out(pattern: str) -> None:
    """A local path spelled out (no wildcard) that is there, but that the job cannot read: a link it cannot follow
    (its target gone, or in a folder it cannot enter), named as one, or a file or folder in a folder it cannot
    enter, or a folder it cannot list, named with that folder. Beam's listing finds nothing of it, or the
    folder alone."""
    path = pattern.rstrip("/") or "/"
    if is_url(pattern) or WILDCARD.search(pattern):
        return
    try:
        os.stat(path)
        if os.path.isdir(path):
            os.scandir(path).close()
    except OSError as e:
        if os.path.islink(path):
            raise InputError(f"--input {pattern}: cannot read it, a link to {os.readlink(path)} ({e.strerror})") from e
        if not isinstance(e, FileNotFoundError | NotADirectoryError):
            raise InputError(
                f"--input {pattern}: cannot read the folder {_not_entered(path)} ({e.strerror}), where the pattern "
                "may match files; make it readable to this job, or write the pattern so that it does not reach it"
            ) from e


def _names_a_folder(listing: _Listing, pattern: str) -> bool:
    """Whether a pattern without a wildcard names a folder holding anything: a local one as it is, whatever
    its subfolders' permissions and links (the pattern the user writes instead meets those; one it cannot
    list _check_spelled_out names); on object storage, a prefix."""
    if is_url(pattern):
        return bool(listing.match(f"{pattern.rstrip('/')}/**", pattern))
    try:
        with os.scandir(pattern) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


def _a_folder(listing: _Listing, pattern: str) -> str:
    folder = pattern.rstrip("/")
    parquet = listing.match(f"{folder}/*.parquet", pattern, whole=False)
    files = f"{folder}/*.parquet" if parquet else f"{folder}/**"  # else partitioned
    return f"--input {pattern}: a folder; pass its files, as in '{files}'"


def _check_datasets_read(listing: _Listing, pattern: str, read: set[str], instead: str) -> None:
    """Refuses folders a pattern naming files by their type (`kb/*.parquet`, `kb/*/docs.parquet`) matches,
    holding files no pattern reads (`read`): Spark writes a dataset as `kb/docs.parquet/part-*.parquet`,
    and Beam's `*`, as a shell's, neither descends into a folder nor lists one, so those rows would be left
    out without a word. A folder a pattern spells out whole is named by the other checks."""
    if not _names_files_by_type(pattern):
        return
    inside = spelled_pattern(f"{pattern}/**")
    unread = [
        m.path
        for m in listing.match(inside, pattern)
        if same_spelling(m.path) not in read and not is_hidden(m.path, inside)
    ]
    folders = sorted({_folder_matched(pattern, path) for path in unread})
    if folders:
        raise InputError(
            f"--input {pattern}: matches {len(folders)} folder(s) named as its files are ({folders[0]}/"
            f"{', ...' if len(folders) > 1 else ''}), as Spark writes a dataset, and a wildcard does not read "
            f"into a folder; pass their files too, as in --input '{instead}'"
        )


def _names_files_by_type(pattern: str) -> bool:
    """Whether the pattern holds a wildcard and its last name ends as a file type's (`*.parquet`); one
    ending in / matches the files in the folders it names, as Beam reads it."""
    return WILDCARD.search(pattern) is not None and _EXTENSION.search(pattern.rpartition("/")[2]) is not None


def _folder_matched(pattern: str, path: str) -> str:
    """The folder of `path` that `pattern` matched: its deepest one the pattern reaches."""
    parts = path.split("/")
    return next(
        folder
        for folder in ("/".join(parts[:end]) for end in range(len(parts) - 1, 0, -1))
        if pattern_reaches(pattern, folder)
    )


def is_hidden(path: str, pattern: str) -> bool:
    """Whether a wildcard of `pattern` (as spelled_pattern spells it) matched, in `path` (as _Listing gives it),
    a name starting with _ or .: Spark's `_SUCCESS` and `_temporary/` (a job's unfinished attempts), Hadoop's
    `.crc` checksums, `_metadata` summaries, which Spark, Hive and pyarrow's datasets do not read as data. A name
    the pattern spells out is read."""
    wildcard = WILDCARD.search(pattern)
    if wildcard is None or not path.startswith(pattern[: wildcard.start()]):
        return False
    spelled = pattern[: wildcard.start()]
    names = path[len(spelled) :].split("/")
    if spelled and not spelled.endswith("/"):  # that name begins as the pattern spells it
        names = names[1:]
    return any(name.startswith(("_", ".")) for name in names)


def _utf8(path: str) -> bool:
    """Whether a local path is UTF-8: Python keeps a name's other bytes as lone surrogates (\\udce9)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: str) -> str:
    """A local path with the bytes of its name that are not UTF-8 written as escapes (caf\\xe9.parquet)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _special(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:  # gone since the listing: the read names it
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


class TypedSchema(NamedTuple):
    """The columns' types for the run, and where they came from."""

    path: str  # the shard giving the types: the first holding rows
    shard: pq.ParquetFile
    schema: pa.Schema
    valueless: list[str]  # columns holding no value in any shard
    typed_in: dict[str, str]  # columns typed by a later shard's values: that shard, which messages name


def typed_schema(files: list[str], names: list[str]) -> TypedSchema:
    """The shard whose schema gives the columns' types (the first holding rows: an empty shard may
    carry no types, as pandas writes an empty text column as null), with its file, that schema and the
    columns holding no value in any shard. A column of type null there, or holding only nulls (pandas
    types an empty column double), takes its type from the next shard holding values in it; one holding
    none anywhere keeps its own. A part of type null (list<null>: a shard whose lists were all empty)
    takes its type likewise, from the next shard whose part is typed (one_family). Later footers are
    read FOOTER_THREADS at a time, only while a column still lacks a type."""
    opened = ((p, open_parquet(p)) for p in files)  # footers read one at a time, each once
    path, shard = next(((p, f) for p, f in opened if f.metadata.num_rows), None) or (files[0], open_parquet(files[0]))
    schema = typed_by_values(shard)
    untyped = [n for n in names if schema.get_field_index(n) >= 0 and holds_null(schema.field(n).type)]
    typed_in: dict[str, str] = {}
    later = files[files.index(path) + 1 :]
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        for start in range(0, len(later), FOOTER_THREADS):
            if not untyped:
                break
            batch = later[start : start + FOOTER_THREADS]
            for their_path, theirs in zip(batch, pool.map(_values_schema, batch), strict=True):
                for name in [n for n in untyped if theirs is not None and theirs.get_field_index(n) >= 0]:
                    index = schema.get_field_index(name)
                    ours, their_type = schema.field(index).type, theirs.field(name).type
                    if not one_family(ours, their_type):
                        continue  # refused by check_shard, naming that shard
                    if (filled := type_holding_both(ours, their_type)) != ours:
                        schema = schema.set(index, schema.field(index).with_type(filled))
                        typed_in[name] = their_path
                    if not holds_null(filled):
                        untyped.remove(name)
    valueless = [name for name in untyped if pa.types.is_null(schema.field(name).type)]
    for name in valueless:
        index = schema.get_field_index(name)
        schema = schema.set(index, shard.schema_arrow.field(name))
    return TypedSchema(path, shard, schema, valueless, typed_in)


def _values_schema(path: str) -> pa.Schema | None:
    """A shard's types as its values give them (typed_by_values); None without rows, whose types are a
    writer's guess (pandas types an empty column double)."""
    shard = open_parquet(path)
    return typed_by_values(shard) if shard.metadata.num_rows else None


def widened_integers(files: list[str], schema: pa.Schema, names: list[str]) -> pa.Schema:
    """`schema` with each integer of the columns `names` narrower than 64 bits, at any depth (list
    items, struct fields, map keys and items), typed to hold every shard's integers: one night's
    shards from two writers (Spark's int32 or list<int32> beside pandas' int64 or list<int64>) are
    read, not refused midway at the first wide value. uint64 beside signed integers is read as
    int64, which holds all but uint64's top half. Footers are read in threads, for at most
    MAX_FOOTERS files; past that, a value the type cannot hold still fails naming its file and row,
    as does a footer that cannot be read. Decimals likewise take the scale and integer digits every
    shard's need (pyarrow types a file's decimals by its values: 1.5 is decimal128(2, 1), 12345.25
    decimal128(7, 2)). Dictionaries' indices are at least int32, whatever any footer says: one batch may
    hold the categories of several shards."""
    narrow = [name for name in names if schema.get_field_index(name) >= 0 and may_widen(schema.field(name).type)]
    if not narrow:
        return schema
    found = []
    if len(files) <= MAX_FOOTERS:
        with ThreadPoolExecutor(FOOTER_THREADS) as pool:
            found = list(pool.map(_schema_or_none, files))
    for name in narrow:
        index = schema.get_field_index(name)
        kind = type_holding_both(schema.field(index).type, schema.field(index).type)  # dictionaries: int32 at least
        for theirs in found:
            if theirs is not None and theirs.get_field_index(name) >= 0:
                kind = type_holding_both(kind, theirs.field(name).type)
        schema = schema.set(index, schema.field(index).with_type(kind))
    return schema


def _warn_decimal256(columns: InputColumns, schema: pa.Schema, path: str) -> None:
    """Decimals that only decimal256 holds together (Spark's decimal(38, 0) beside decimal(38, 18), widened to
    hold every shard's and --previous's ids: type_holding_both) are written so; Polars cannot read them and
    DuckDB reads them as DOUBLE. `schema`: the first shard's, at `path`."""
    for field in columns.typed:
        theirs = schema.field(field.name).type if schema.get_field_index(field.name) >= 0 else pa.null()
        if holds_decimal256(field.type) and not holds_decimal256(theirs):
            _LOG.warning(
                "column %r is %s in %s, and is written as %s to hold the decimals of every shard (and of --previous): "
                "Polars cannot read it and DuckDB reads it as DOUBLE (digits lost); write the shards with one "
                "decimal type to keep decimal128",
                field.name, theirs, path, field.type,
            )  # fmt: skip


def _schema_or_none(path: str) -> pa.Schema | None:
    try:
        return open_parquet(path).schema_arrow
    except InputError:
        return None


def typed_as_previous(schema: pa.Schema, previous: str, untyped: list[str], parts: list[str]) -> pa.Schema:
    """`schema` with columns typed as the previous run wrote them where tonight's types are a writer's guess.
    The columns `untyped` held no value tonight (pandas types an empty column double; without any row,
    tonight deletes what the previous run held): each takes that run's type. The columns `parts` held
    values with a part typed null (a night whose tags were all empty lists reads as list<null>): that part
    takes that run's, where the two are of one family, so the outputs keep last night's list<string> for
    loaders appending to a table. Left as it is where that run cannot tell (read_previous then says what is
    wrong with it)."""
    if not (untyped or parts):
        return schema
    try:
        with FileSystems.open(FileSystems.join(previous, MANIFEST)) as f:
            written = json.load(f)["files"]["embeddings"]
        theirs = open_parquet(FileSystems.join(previous, written[0])).schema_arrow
    except (OSError, ValueError, KeyError, IndexError, TypeError, InputError):
        return schema
    for name in [*untyped, *parts]:
        index = schema.get_field_index(name)
        if index < 0 or theirs.get_field_index(name) < 0:
            continue
        ours, their_type = schema.field(index).type, theirs.field(name).type
        if name in parts:
            their_type = type_holding_both(ours, their_type) if one_family(ours, their_type) else ours
        schema = schema.set(index, schema.field(index).with_type(their_type))
    return schema


def _holds_null_part(schema: pa.Schema, name: str) -> bool:
    index = schema.get_field_index(name)
    return index >= 0 and holds_null(schema.field(index).type)


def check_typed_without_rows(schema: pa.Schema, first: str, files: int, names: list[str]) -> None:
    """No shard holds a row and there is no previous run to type the columns as: a column typed null
    in the first (whose types the run takes; as pandas writes an empty object column) has no type the
    outputs could take, and refusing it here names the cause instead of a type error about a column
    of a shard that holds nothing."""
    untyped = [n for n in names if schema.get_field_index(n) >= 0 and pa.types.is_null(schema.field(n).type)]
    if untyped:
        raise InputError(
            f"no input shard holds a row ({files} matched), and column {untyped[0]!r} is typed null in {first} (as "
            "pandas writes an empty column): the outputs' types cannot be known; write the shards with typed "
            "columns, or pass --previous (the last run's output) to take that run's types"
        )


def describe_inputs(files: list[PlannedFile]) -> list[dict]:
    """Each input file's path, size and modification time (UTC), for the manifest."""
    return [
        {
            "path": f.path,
            "bytes": f.size,
            "modified": datetime.fromtimestamp(f.modified, UTC).isoformat() if f.modified is not None else None,
        }
        for f in files
    ]


class Footers(NamedTuple):
    rows: int
    text_bytes: int  # the text column uncompressed: the work ahead, however well the files compressed


def checked_footers(files: list[str], columns: InputColumns) -> Footers | None:
    """Rows and text in all input files by their Parquet footers, each footer read (in threads) and
    checked as the workers check it: a file that is not readable Parquet, or that holds rows without
    the columns or with an id or carried column of another type family, fails here, before any
    worker starts, naming the first such file. None when there are too many to read before a local run."""
    if len(files) > MAX_FOOTERS:
        return None

    def footers(path: str) -> Footers:
        parquet = open_parquet(path)
        metadata = parquet.metadata
        if not metadata.num_rows:  # a shard without rows is not read, so not checked
            return Footers(0, 0)
        check_shard(typed_by_values(parquet), path, columns)
        check_integers_held(parquet, path, columns.typed)
        paths = leaf_paths(metadata)
        if columns.text not in paths:  # nested (a list, a struct): no leaf of that name, and no text to embed
            return Footers(metadata.num_rows, 0)
        text = paths.index(columns.text)
        groups = (metadata.row_group(g) for g in range(metadata.num_row_groups))
        return Footers(metadata.num_rows, sum(group.column(text).total_uncompressed_size for group in groups))

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        found = list(pool.map(footers, files))
    return Footers(sum(f.rows for f in found), sum(f.text_bytes for f in found))


def leaf_paths(metadata: pq.FileMetaData) -> list[str]:
    """Each leaf column's dotted path, in the footer's order: a top-level column's is its name."""
    return [metadata.schema.column(i).path for i in range(metadata.num_columns)]


def check_integers_held(parquet: pq.ParquetFile, path: str, fields: tuple[pa.Field, ...]) -> None:
    """A uint64 column that the run reads as int64 (beside signed integers no integer type holds both) and
    whose footer's statistics show a value past int64 fails here, naming its file, column and rows,
    rather than in a worker once the rows before it are embedded. Nested columns, and footers without
    statistics, are left to the worker, which names the row."""
    schema, paths = parquet.schema_arrow, leaf_paths(parquet.metadata)
    for field in fields:
        index = schema.get_field_index(field.name)
        widened = pa.types.is_int64(field.type) and index >= 0 and pa.types.is_uint64(schema.field(index).type)
        if not widened or paths.count(field.name) != 1:
            continue
        leaf, first = paths.index(field.name), 0
        for g in range(parquet.metadata.num_row_groups):
            group = parquet.metadata.row_group(g)
            stats = group.column(leaf).statistics
            if stats is not None and stats.has_min_max and stats.max > INT64_MAX:
                raise InputError(
                    f"{path}: column {field.name!r} holds {stats.max} in rows {first}-{first + group.num_rows - 1}, "
                    "past int64, which this run reads it as: no integer type holds both this file's uint64 and the "
                    "signed integers of the run's other files (input shards, the --previous run's); write it as one "
                    "integer type in every shard and night"
                )
            first += group.num_rows


def check_previous_ids_held(previous: PreviousRun, id_field: pa.Field) -> None:
    """The --previous run's uint64 ids, read as int64 beside tonight's signed ones, checked by its
    footers as the input's are (check_integers_held): only then, so a night of other ids reads no more
    than the one footer read_previous reads."""
    if not (pa.types.is_uint64(previous.id_type) and pa.types.is_int64(id_field.type)):
        return

    def check(path: str) -> None:
        check_integers_held(open_parquet(path), path, (id_field,))

    try:
        with ThreadPoolExecutor(FOOTER_THREADS) as pool:
            list(pool.map(check, [f.path for f in previous.files[:MAX_FOOTERS]]))
    except InputError as e:
        raise InputError(f"--previous {previous.path}: {e}; or leave --previous out to embed every row afresh") from e


def join_buckets(rows: int) -> int:
    """Enough groups of ids that each holds about ROWS_PER_JOIN_BUCKET units' claims or previous rows
    (with their vectors), within [MIN_JOIN_BUCKETS, MAX_JOIN_BUCKETS]."""
    return min(max(math.ceil(rows / ROWS_PER_JOIN_BUCKET), MIN_JOIN_BUCKETS), MAX_JOIN_BUCKETS)


def _finished(output: str, files: dict[str, str]) -> InputError:
    return InputError(
        f"{output} already holds a finished run's outputs ({len(files)} files); pass --overwrite to replace them"
    )


def prepare_output(
    output: str | None, overwrite: bool, previous: str | None, run_id: str, started_at: str, plan_only: bool = False
) -> OutputOwner:
    """Refuse to replace a finished run unless asked; take the directory over for run `run_id`, then
    clear what an unfinished run left behind.

    A run killed at any moment leaves no manifest, so running the same command
    again replaces its partial files and finishes the job; one still running
    stops, having lost the directory (transforms.output_owner). With `plan_only`
    it only checks and takes nothing.
    """
    if not output:
        raise InputError("--output is required: the directory to write embeddings into")
    if WILDCARD.search(output):
        # Beam's file sink matches its own output names as glob patterns: its rename would fail at
        # the end, and clearing an earlier run here would match other directories.
        raise UsageError(
            f"--output {output!r} holds a glob character (* ? or [): Beam's file sink reads its output path "
            "as a pattern; choose a directory name without them"
        )
    # A bucket's root: Beam names GCS and S3 objects below a bucket (hdfs://out is the folder /out).
    if FileSystems.get_scheme(output) in ("gs", "s3") and "/" not in output.split("://", 1)[1].strip("/"):
        raise UsageError(f"--output {output} is a bucket's root; give a folder in it ({output.rstrip('/')}/embeddings)")
    if previous and same_place(output, previous):
        raise InputError(f"--output and --previous are both {output}; write today's run to a new directory")
    if os.path.isfile(output) if not is_url(output) else FileSystems.exists(output.rstrip("/")):
        raise InputError(f"--output {output} is a file; give a directory (it is made when it does not exist)")
    try:
        earlier = output_files(output)
    except OSError as e:  # Beam's BeamIOError: a bucket that does not exist, no permission to list
        raise InputError(f"--output {output}: cannot be listed ({one_line(e)})") from e
    finished = MANIFEST in earlier
    if finished and not overwrite:
        raise _finished(output, earlier)
    if earlier and not finished:
        doing = "would replace" if plan_only else "replacing"
        _LOG.warning("%s: %s %d files of a run that did not finish", output, doing, len(earlier))
    owner = OutputOwner(output, run_id)
    if plan_only:
        return owner
    try:
        owner.take(started_at)
    except Exception as e:  # whatever the file system raises: permissions, a file in the path, a missing bucket
        raise InputError(f"--output {output}: cannot write there ({type(e).__name__}: {e})") from e
    owner.check()  # of two runs started at one moment, the one that lost deletes nothing
    earlier = output_files(output)  # again: a run still going may have published since
    if MANIFEST in earlier and not overwrite:
        owner.release()
        raise _finished(output, earlier)
    try:
        if MANIFEST in earlier:  # alone and first: Beam deletes on past a path it fails to, and a manifest
            FileSystems.delete([earlier.pop(MANIFEST)])  # left without its files would publish a run that is not
        if earlier:
            FileSystems.delete(list(earlier.values()))
    except OSError as e:  # Beam's BeamIOError: a retention-held object, no permission to delete
        owner.release()
        raise InputError(f"--output {output}: cannot replace the files there ({one_line(e)})") from e
    remove_temp_files(output)  # and the folder a replaced change set left empty
    return owner


def _fingerprinted(model_block: dict) -> dict:
    stored = VECTOR_KEYS if model_block.get("vector_dtype", "float32") != "float32" else ()
    keys = (*FINGERPRINT_KEYS, *ENCODER_FIX_KEYS, *CHUNKING_KEYS, *stored)
    return {key: model_block[key] for key in keys if key in model_block}


def _setting_names(model_block: dict) -> dict:
    """The fingerprinted settings as a log line names them: a calibration by its sha256, not its ranges."""
    settings = _fingerprinted(model_block)
    if "calibration" in settings:
        settings["calibration"] = f"sha256 {settings['calibration']['sha256'][:12]}"
    return settings


def model_fingerprint(model_block: dict) -> str:
    settings = json.dumps(_fingerprinted(model_block), sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()


def encoder_fixes(folder: ModelFolder, max_seq_length: int | None, prompt: str) -> dict:
    """The ENCODER_FIX_KEYS this model and prompt need, from its tokenizer. Unless the prompt is to be
    measured, the types are read with the tokenizers library from tokenizer.json: TextTokenizer loads
    transformers, seconds to import, and the plan takes a fraction of one without it."""
    if not isinstance(folder.input, TransformerSpec):  # a static model: no special tokens, no pooling of a prompt
        return {}
    saved = folder.tokenizer_path / "tokenizer.json"
    measured = bool(prompt) and not folder.include_prompt
    tokens = TextTokenizer(folder, max_seq_length, None, prompt) if measured or not saved.is_file() else None
    fixes = {}
    raw = tokens.raw if tokens else Tokenizer.from_file(str(saved))
    raw.no_padding()  # a tokenizer.json may pad every text to a length (TextTokenizer's raw pads none)
    if any(types := raw.encode("a", add_special_tokens=True).type_ids):
        fixes["token_types"] = types
    if measured and len(tokens.raw.encode(prompt, add_special_tokens=True).ids) > tokens.max_seq_length:
        fixes["prompt_tokens"] = tokens.prompt_length
    if folder.input.split_special_tokens:
        fixes["split_special_tokens"] = True
    return fixes


class PassageSettings(Protocol):
    """The options passages are cut by: the job's EmbedOptions, or the calibration command's."""

    chunk_tokens: int | None
    chunk_overlap: int | None
    max_seq_length: int | None
    prompt_name: str | None
    prompt: str | None


def texts_cut(passages: Chunking | None, window: int | None) -> str:
    """How texts are cut before the model sees them, as a calibration records it and a run compares it."""
    if passages:
        return f"passages of up to {passages.tokens} tokens, {passages.overlap} overlapping"
    return f"whole texts, truncated to {window} tokens" if window else "whole texts"


def chunking(options: PassageSettings, folder: ModelFolder) -> Chunking | None:
    """The passage settings, refused (exit 2) when the model cannot honour them."""
    if options.chunk_tokens is None:
        if options.chunk_overlap is not None:
            raise UsageError("--chunk_overlap needs --chunk_tokens")
        return None
    tokenizer = TextTokenizer(folder, options.max_seq_length, options.prompt_name, options.prompt)
    tokens = options.chunk_tokens
    overhead = int(tokenizer.count([""])[0])
    if tokenizer.max_seq_length is not None and tokens > tokenizer.max_seq_length:
        raise UsageError(f"--chunk_tokens {tokens} is more than the model's limit of {tokenizer.max_seq_length} tokens")
    if tokens < overhead + MIN_CONTENT_TOKENS:
        raise UsageError(
            f"--chunk_tokens {tokens} is too small: special tokens and prompt take {overhead} tokens of every "
            f"passage; the least is {overhead + MIN_CONTENT_TOKENS}"
        )
    content = tokens - overhead
    limit = overlap_limit(content)
    overlap = min(DEFAULT_CHUNK_OVERLAP, limit - 1) if options.chunk_overlap is None else options.chunk_overlap
    if not 0 <= overlap < limit:
        raise UsageError(
            f"--chunk_overlap {overlap} must be at least 0 and less than {limit}: under half of the {content} "
            f"tokens of text a passage holds (--chunk_tokens {tokens} less {overhead} for special tokens and prompt)"
        )
    splitter = PassageSplitter(tokenizer.raw, tokens, overlap, tokenizer.count)  # as the workers' (its version)
    return Chunking(tokens, overlap, splitter.prompt_merges)


def read_previous(path: str, columns: InputColumns, model_block: dict) -> PreviousRun:
    """The previous run, trusted only through its manifest, which is written last."""
    manifest_path = FileSystems.join(path, MANIFEST)
    if not FileSystems.exists(manifest_path):
        if wrong := not_a_folder(path):
            raise InputError(f"--previous {path}: {wrong}, or leave --previous out")
        going = unfinished_run(path)
        raise InputError(
            f"--previous {path}: no {MANIFEST}, so it is not a finished run's output (a run that was killed or "
            f"failed leaves none{f'; {going}' if going else ''}); pass the last finished output, or leave "
            "--previous out"
        )
    with FileSystems.open(manifest_path) as f:
        try:
            manifest = json.load(f)
        except ValueError as e:
            raise InputError(f"--previous {manifest_path}: not a readable manifest ({e})") from e
    if not isinstance(manifest, dict):
        manifest = {}
    missing_keys = [key for key in ("model", "files", "columns") if not isinstance(manifest.get(key), dict)]
    if "columns" not in missing_keys and not isinstance(manifest["columns"].get("carried"), list):
        missing_keys.append("columns.carried")
    if missing_keys:
        raise InputError(f"--previous {manifest_path}: not a manifest of this job (no {', '.join(missing_keys)})")
    id_column = manifest.get("columns", {}).get("id")
    if id_column != columns.id.name:
        raise InputError(
            f"--previous {path}: its id column is {id_column!r}, this run's is {columns.id.name!r}, so its rows "
            "cannot be matched to this run's; leave --previous out the night the id column changes (every row "
            "is embedded again)"
        )
    reuse = manifest["model"].get("fingerprint") == model_block["fingerprint"]
    if not reuse:
        theirs, ours = _setting_names(manifest["model"]), _setting_names(model_block)
        changed = ", ".join(
            f"{key} {theirs.get(key)!r} -> {ours.get(key)!r}"
            for key in sorted(theirs.keys() | ours.keys())
            if theirs.get(key) != ours.get(key)
        )
        _LOG.warning(
            "--previous %s was embedded with another model or settings (%s): re-embedding every row",
            path,
            changed or "fingerprint",
        )
    names = manifest["files"].get("embeddings", [])
    repeated = next(((name, times) for name, times in Counter(names).items() if times > 1), None)
    if repeated:  # read twice, each of its ids would be held twice: refused in the workers
        raise InputError(
            f"--previous {path}: its manifest lists {repeated[0]} {repeated[1]} times, which no run "
            "writes; pass a finished run's output as it wrote it, or leave --previous out"
        )
    files = [FileSystems.join(path, name) for name in names]
    present = {same_spelling(m.path): m for m in FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list}
    lost = [f for f in files if same_spelling(f) not in present]
    if lost:
        raise InputError(
            f"--previous {path}: {len(lost)} of the {len(files)} embeddings files its manifest lists are gone "
            f"({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}); "
            "pass a complete earlier run, or leave --previous out"
        )
    planned = [PlannedFile.found(f, present[same_spelling(f)]) for f in files]
    # A file replaced since (its manifest records every file's bytes) would make a wrong change set.
    checks = manifest.get("file_checks") if isinstance(manifest.get("file_checks"), dict) else {}
    recorded = {name: (checks.get(name) or {}).get("bytes") for name in names}
    changed = [
        file.path
        for name, file in zip(names, planned, strict=True)
        if recorded[name] is not None and recorded[name] != file.size
    ]
    if changed:
        raise InputError(
            f"--previous {path}: {len(changed)} embeddings file(s) differ in size from what its manifest recorded "
            f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); it was changed after it was written: "
            "pass an untouched earlier run, or leave --previous out"
        )
    schema = id_type = None
    rows = {}
    if files:  # one footer: ids of another family fail here, before workers start, not in them
        first = open_parquet(files[0])
        schema = first.schema_arrow
        # A file with rows (after a night that reused every row, the first holds none), as the manifest
        # counts them (older ones did not): a run whose input had no rows typed its ids by a writer's guess.
        rows = {name: (checks.get(name) or {}).get("rows", first.metadata.num_rows) for name in names}
        holding = next((f for name, f in zip(names, files, strict=True) if rows[name]), None)
        if holding is not None:
            found = schema if holding == files[0] else open_parquet(holding).schema_arrow
            try:
                check_previous_file(found, holding, pa.schema([columns.id]), [columns.id.name])
            except InputError as e:
                raise InputError(f"--previous {path}: {e}; leave --previous out to embed every row afresh") from e
            id_type = found.field(columns.id.name).type
    passages = has_passages(manifest["model"])
    carried = [f.name for f in columns.carry]
    if forgotten := [name for name in manifest["columns"]["carried"] if name not in carried]:
        own = written_columns(has_passages(model_block))  # not to be carried tonight
        keepable = [name for name in forgotten if name not in own]
        advice = [f"pass --carry_columns {carry_columns_value([*carried, *keepable])} to keep them"] if keepable else []
        if len(keepable) < len(forgotten):
            advice.append(f"this run writes a column {quoted([n for n in forgotten if n in own])} of its own")
        _LOG.warning(
            "--previous %s carried %s, this run does not: its rows are written without them%s and a loader drops "
            "those columns; %s",
            path,
            quoted(forgotten),
            " (restated in the change set)" if passages == has_passages(model_block) else "",  # else no change set
            "; ".join(advice),
        )
    offsets = [f.name for f in PASSAGE_FIELDS[1:]] if passages else []
    written = [*offsets, *manifest["columns"]["carried"]]
    return PreviousRun(
        path=path,
        run_id=manifest.get("run_id"),
        files=planned,
        columns=tuple(
            schema.field(name)
            if schema is not None and schema.get_field_index(name) >= 0
            else pa.field(name, pa.null())
            for name in written
        ),
        reuse=reuse,
        passages=passages,
        id_type=id_type,
        rows=sum(rows.values()),
    )


def threads_per_worker(options: PipelineOptions) -> int | None:
    """Local workers split this machine's cores; one oversubscribed core costs more than it gives."""
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        return None
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers if direct.direct_running_mode != "in_memory" else 1
    return max(1, (os.cpu_count() or 1) // max(workers or 1, 1))


def check_device(device: str, dtype: str, local: bool) -> None:
    """--device names a device torch knows, and --dtype one it can run there (as far as this
    machine can tell: a remote job's workers may have the GPU the launcher lacks)."""
    if not re.fullmatch(DEVICES, device):
        raise UsageError(f"--device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if local and device.startswith("cuda"):  # a local run embeds on this machine
        if not cuda_available():
            raise UsageError(f"--device {device}: this machine has no working CUDA device (pass cpu or auto)")
        import torch  # a driver is here

        if device != "cuda" and int(device[5:]) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    on_cpu = device == "cpu" or (device == "auto" and local and not cuda_available())
    if dtype == "float16" and on_cpu:
        raise UsageError("--dtype float16 runs on CUDA only, and this job runs on CPU: use float32 or bfloat16")


def checked_model(opts: EmbedOptions) -> tuple[ModelFolder, str, str]:
    """The model folder, its weights' sha256 and its folder digest, refused when it is not the one
    expected or the options don't fit it."""
    folder = model_folder(opts.model, opts.model_folder_sha256, "the digest --model_folder_sha256 pins")
    weights = folder.weights_sha256()
    expected_weights = opts.model_sha256 or weights
    if weights != expected_weights:
        raise ModelFolderError(
            f"{opts.model or folder.path}: its weights have sha256 {weights}, not the expected {expected_weights}"
        )
    check_model_settings(folder, opts.prompt, opts.prompt_name, opts.truncate_dim, opts.max_seq_length)
    if opts.max_seq_length is not None and isinstance(folder.input, TransformerSpec):
        # Only when asked for: the tokenizer costs the launcher transformers' import.
        overhead = int(TextTokenizer(folder, opts.max_seq_length, opts.prompt_name, opts.prompt).count([""])[0])
        if opts.max_seq_length <= overhead:
            raise UsageError(
                f"--max_seq_length {opts.max_seq_length} leaves no token for text: special tokens and prompt "
                f"take {overhead}; the least is {overhead + 1}"
            )
    return folder, weights, opts.model_folder_sha256 or folder_sha256(folder.path)


def check_model_settings(
    folder: ModelFolder,
    prompt: str | None,
    prompt_name: str | None,
    truncate_dim: int | None,
    max_seq_length: int | None,
) -> None:
    """Options the model cannot honour are usage errors (exit 2), as a malformed command line is."""
    if prompt is not None and prompt_name is not None:
        raise UsageError("--prompt and --prompt_name both given: pass one")
    try:
        folder.output_dim(truncate_dim)
    except ModelFolderError as e:  # the option's value, or the folder's own (its message names the folder)
        raise UsageError(f"--{e}" if truncate_dim is not None else f"{folder.path}: its {e}") from e
    try:
        folder.seq_length(max_seq_length)
    except ModelFolderError as e:
        raise UsageError(f"--{e}" if max_seq_length is not None else str(e)) from e
    try:
        folder.prompt(prompt_name)
    except ModelFolderError as e:
        raise UsageError(f"--prompt_name: {e}") from e


def _warn_document_prompt_unused(folder: ModelFolder, prompt: str) -> None:
    """Models trained for retrieval with a prompt before documents define it as `document` (embeddinggemma's
    `title: none | text: `), which sentence-transformers' `encode_document` puts first, or as `passage` or
    `corpus` (E5's `passage: `), which its model cards ask for; `encode`, whose vectors the job equals, puts
    neither. A run asking for no prompt embeds its texts without that one: likely an oversight when the texts
    are documents to retrieve, so it is said at start."""
    name = next((n for n in DOCUMENT_PROMPT_NAMES if folder.prompts.get(n)), None)
    if name is not None and folder.prompts[name] != prompt:
        why = (
            "which sentence-transformers' encode_document puts before each text"
            if name == "document"
            else "which retrieval models such as E5 are trained to see before documents (sentence-transformers 6's "
            "encode_document puts only a prompt named 'document')"
        )
        _LOG.warning(
            "the model defines a prompt for documents, %r (%r), %s; this run embeds its texts %s, as encode does: "
            "pass --prompt_name %s to embed them as documents",
            name, folder.prompts[name], why, f"with the prompt {prompt!r}" if prompt else "without a prompt", name,
        )  # fmt: skip


def vector_quantizer(opts: EmbedOptions, dim: int, model: CalibratedModel) -> Quantizer:
    """How vectors are stored, with the calibration int8 and uint8 need; refused when it does not fit
    the vectors' dimensions or was made for another model or prompt."""
    dtype, path = opts.vector_dtype, opts.calibration
    if path and dtype not in CALIBRATED:
        raise UsageError(f"--calibration is for int8 and uint8 vectors, and --vector_dtype is {dtype}")
    if dtype in CALIBRATED and not path:
        raise UsageError(
            f"--vector_dtype {dtype} needs --calibration FILE, each dimension's range for this model: "
            "make one with `python -m pipeline.calibrate --output FILE --model ...` and keep it"
        )
    calibration = None
    if path:
        if not FileSystems.exists(path):
            raise InputError(f"--calibration {path}: no such file")
        with FileSystems.open(path) as f:
            try:
                calibration = Calibration.from_json(f.read(), path)
            except CalibrationError as e:
                raise InputError(f"--calibration {e}") from e
    quantizer = Quantizer(dtype, calibration)
    try:
        quantizer.check(dim)
    except CalibrationError as e:
        raise UsageError(f"--calibration {path}: {e} (made for another model or --truncate_dim?)") from e
    if calibration is not None:
        try:
            calibration.check_model(model)
        except CalibrationError as e:
            raise UsageError(f"--calibration {path}: {e}") from e
        cut = calibration.made_for.texts_cut if calibration.made_for else None
        if cut and cut != model.texts_cut:
            _LOG.warning(
                "--calibration %s was measured on %s, and this run embeds %s: values past its ranges are clipped "
                "and counted; make one with this run's --max_seq_length and --chunk_tokens (python -m "
                "pipeline.calibrate)",
                path, cut, model.texts_cut,
            )  # fmt: skip
        if calibration.made_for is None:
            _LOG.warning(
                "--calibration %s names no model (made before calibration files recorded theirs): it cannot be "
                "checked against this one; remake it with python -m pipeline.calibrate",
                path,
            )
    return quantizer


def max_file_bytes(target_file_mb: float) -> int:
    if not 0 < target_file_mb < math.inf:
        raise UsageError(f"--target_file_mb {target_file_mb} must be a finite number above 0")
    return max(1, int(target_file_mb * 2**20))


def plan_job(options: PipelineOptions) -> JobPlan:
    opts = options.view_as(EmbedOptions)
    started = time.time()
    for option, path in (("--output", opts.output), ("--previous", opts.previous), ("--model", opts.model)):
        if path and not _utf8(path):  # the manifest names it: the run failed as it was published, or loaded
            raise UsageError(f"{option} {_shown(path)}: a path that is not UTF-8, which the manifest cannot name")
    patterns = _split_patterns(opts.input)
    listing = _Listing()
    input_files = match_inputs(patterns, listing)
    files = [f.path for f in input_files]
    if bad := next((path for path in files if not _utf8(path)), None):  # each row's source_file: failed in workers
        raise InputError(
            f"{_shown(bad)}: a path that is not UTF-8, which the job cannot name in its outputs and messages "
            "(matched by --input); rename it"
        )
    inside = next((path for path in files if opts.output and same_place(path.rsplit("/", 1)[0], opts.output)), None)
    if inside:  # the next night's pattern over that folder would read this night's outputs as input
        raise InputError(f"--output {opts.output} holds input files ({inside}); write the outputs to another folder")
    written = [FileSystems.join(opts.output, *name.split("/")) for name in WRITTEN_EXAMPLES] if opts.output else []
    # A folder named as a pattern's files (`kb/*.parquet` over `kb/emb.parquet/`) would be refused next night;
    # an output that is an input file is named as a file further on.
    named_as_inputs = bool(opts.output) and same_spelling(opts.output.rstrip("/")) not in files
    followed = {  # the links to folders each local pattern follows below its first wildcard
        p: listing.linked(spelled_pattern(p)).followed if WILDCARD.search(p) else [] for p in patterns
    }
    reaching = next(
        (
            p
            for p in patterns
            if any(_takes_in(p, path, followed[p]) for path in written)
            or (named_as_inputs and _names_files_by_type(p) and _takes_in(p, opts.output.rstrip("/"), followed[p]))
        ),
        None,
    )
    if reaching:
        raise InputError(
            f"--output {opts.output}: the --input pattern {reaching!r} takes in files the job writes there, so the "
            "next night would read this night's outputs as input; write the outputs to a folder no pattern reaches"
        )
    carry = column_names(opts.carry_columns)
    if opts.text_column == opts.id_column:
        raise UsageError(
            f"--text_column and --id_column are both {opts.id_column!r}: the id names each row, the text is embedded"
        )
    first, first_file, schema, valueless, typed_in = typed_schema(files, [opts.id_column, opts.text_column, *carry])
    schema = widened_integers(files, schema, [opts.id_column, *(c for c in carry if c != opts.text_column)])
    kept = [opts.id_column, *(c for c in carry if c != opts.text_column)]
    if opts.previous:  # what held no value tonight is a writer's guess: it keeps last night's type
        untyped = kept if not first_file.metadata.num_rows else [c for c in kept if c in valueless]
        parts = [c for c in kept if c not in untyped and _holds_null_part(schema, c)]
        schema = typed_as_previous(schema, opts.previous, untyped, parts)
    elif not first_file.metadata.num_rows:
        check_typed_without_rows(schema, first, len(files), [opts.id_column, opts.text_column, *carry])
    columns = input_columns(schema, first, opts.text_column, opts.id_column, carry)
    if not bucketable(columns.id.type):
        raise InputError(
            f"{typed_in.get(opts.id_column, first)}: id column {columns.id.name!r} is {columns.id.type}; ids must "
            "be strings, binaries, numbers (not float16), dates, times or UUIDs"
        )
    check_device(opts.device, opts.dtype, options.view_as(StandardOptions).runner in LOCAL_RUNNERS)
    folder, weights_sha256, digest = checked_model(opts)
    handler = EncoderHandler(
        model=opts.model,
        folder_sha256=digest,
        device=opts.device,
        dtype=resolve_dtype(opts.dtype, opts.device),
        max_seq_length=folder.seq_length(opts.max_seq_length),
        prompt_name=opts.prompt_name,
        prompt=opts.prompt,
        truncate_dim=opts.truncate_dim,
        cpu_kernels=opts.cpu_kernels,
        token_budget=opts.token_budget,
        threads=threads_per_worker(options),
    )
    dim = folder.output_dim(opts.truncate_dim)
    prompt = opts.prompt if opts.prompt is not None else folder.prompt(opts.prompt_name)
    if opts.prompt is None and opts.prompt_name is None:
        _warn_document_prompt_unused(folder, prompt)
    passages = chunking(opts, folder)
    calibrated = CalibratedModel(weights_sha256, prompt, digest, texts_cut(passages, handler.max_seq_length))
    model_block = {
        "name": str(opts.model) if opts.model else DEFAULT_MODEL_NAME,
        "weights_sha256": weights_sha256,
        "folder_sha256": digest,
        "modules": folder.describe(),
        "dim": dim,
        **vector_quantizer(opts, dim, calibrated).describe(),
        "vector_layout": opts.vector_layout,  # not fingerprinted: either layout holds the same vectors
        "truncate_dim": dim if dim < folder.dim else None,  # the whole vector is one setting, however spelled
        "pooling": list(folder.pooling_modes),
        "normalized": folder.normalize,
        "similarity": folder.similarity,  # not fingerprinted: how vectors are compared, not what they are
        "max_seq_length": handler.max_seq_length,
        "dtype": handler.dtype,
        "prompt": prompt,
        "include_prompt": folder.include_prompt,
        # "normalizer": lower-cased by the tokenizer, prompt included (vectors of runs that said true differ)
        "lower_case": "normalizer" if folder.do_lower_case else False,
        **encoder_fixes(folder, opts.max_seq_length, prompt),
        "created_at": datetime.fromtimestamp(started, UTC).isoformat(),
    }
    check_column_names(columns, passages is not None)
    if passages:
        model_block.update(
            chunk_tokens=passages.tokens,
            chunk_overlap=passages.overlap,
            splitter=SPLITTER_VERSIONS[passages.prompt_merges],
        )
    model_block["fingerprint"] = model_fingerprint(model_block)
    previous = read_previous(opts.previous, columns, model_block) if opts.previous else None
    if (
        previous and previous.id_type is not None
    ):  # ids yesterday held past tonight's width, sign or scale join as they are; the output keeps them
        columns = replace(columns, id=columns.id.with_type(type_holding_both(columns.id.type, previous.id_type)))
        check_previous_ids_held(previous, columns.id)
    _warn_decimal256(columns, first_file.schema_arrow, first)
    file_bytes = max_file_bytes(opts.target_file_mb)
    # Rows, not passages, go through the model only without passages and without reuse.
    local = options.view_as(StandardOptions).runner in LOCAL_RUNNERS
    footers = checked_footers(files, columns) if local else None  # a remote run leaves them to its workers
    rows = footers.rows if footers else None
    progress_total = rows if not passages and not previous else None
    # Last: nothing after this may fail, since it clears the output and takes it over.
    owner = prepare_output(
        opts.output, opts.overwrite, opts.previous, uuid.uuid4().hex, model_block["created_at"], opts.plan_only
    )
    header = {
        "run_id": owner.run_id,
        "output": owner.output,
        "model": model_block,
        "inputs": patterns,
        "input_files": describe_inputs(input_files),
        "previous": {"path": same_spelling(previous.path), "run_id": previous.run_id, "vectors_reused": previous.reuse}
        if previous
        else None,
        "columns": {"id": columns.id.name, "text": columns.text, "carried": [f.name for f in columns.carry]},
        "timings": {"started_at": model_block["created_at"]},
    }
    return JobPlan(
        patterns=patterns,
        input_files=input_files,
        columns=columns,
        handler=handler,
        rows_per_batch=opts.rows_per_batch,
        max_file_bytes=file_bytes,
        # Tonight's rows, counted where footers were read, else estimated from the first file; or
        # --previous's, where more: a bucket holds both, and a small first file must not crowd them.
        join_buckets=join_buckets(
            max(first_file.metadata.num_rows * len(files) if rows is None else rows, previous.rows if previous else 0)
        ),
        progress_interval=opts.progress_interval,
        progress_total=progress_total,
        text_bytes=footers.text_bytes if footers else None,
        previous=previous,
        chunking=passages,
        header=header,
        owner=owner,
    )
