"""Texts as the model sees them: lower-cased when the model asks, its prompt first, cut to its window.

A text is never tokenised much further than the window: a 64 MB cell used to be
tokenised whole (9.3 GB of memory in one worker) and then truncated to 256 tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Encoding, Tokenizer
from tokenizers.normalizers import Lowercase, Normalizer, Sequence

from encoder.model_folder import ModelFolder, ModelFolderError, TransformerSpec

# Characters of a text first tokenised per token of the window; the window's tokens must end in the
# piece's first half, so the bound grows when a text holds fewer than one token per 8 characters
# there (long runs of whitespace, characters the tokenizer drops).
CHARS_PER_TOKEN = 16
# Yet never fewer: WordPiece makes one [UNK] of a word over 100 characters (its
# max_input_chars_per_word), so a prefix cutting such a word must keep over 100 of its characters
# in the half it trusts, or the piece it keeps would tokenise differently from the whole word.
MIN_PREFIX_CHARS = 1024
# A run at the cut (see _run) is waited out only while the piece is shorter than this; past it, a
# window reaching into the run is taken as the piece tokenises it, which may differ from the whole
# text in the run's tokens. Waited out whole, a 16 MB cell of '=' took 138 s and 12 GB (MiniLM).
MAX_RUN_CHARS = 1 << 18
# Nor does the bound grow past this many characters: a 16 MB cell of zero-width spaces (which
# BERT's normalizer drops, so the window never fills) was tokenised whole, in 17 s and 2.4 GB.
MAX_TOKENIZED_CHARS = 1 << 22
# A text a model takes whole (a static model has no window) is tokenised this many characters at a
# time when longer, each piece reaching WHOLE_OVERLAP_CHARS into the next, WHOLE_GROUP pieces per
# call: tokenised at once, a 16 MB cell took 10-16 s on one thread and 1.8 GB of memory.
WHOLE_PIECE_CHARS = 1 << 18
WHOLE_OVERLAP_CHARS = 1 << 15
WHOLE_GROUP = 8
_SPACES = "".join(filter(str.isspace, map(chr, range(0x3001))))  # Unicode's whitespace: U+3000 is the last


@dataclass(frozen=True)
class Tokenized:
    """Every text's token ids (special tokens included, at most max_seq_length when there is one) end
    to end in one array, so that batches are gathered by numpy, not row by row in Python."""

    token_ids: np.ndarray  # (sum of lengths,) int64
    lengths: np.ndarray  # (rows,) int64
    truncated: np.ndarray  # (rows,) bool: held more tokens than max_seq_length, or was read in part
    starts: np.ndarray = field(init=False)  # (rows,) int64: where each text's ids begin in token_ids

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", np.cumsum(self.lengths) - self.lengths)

    def of(self, rows: np.ndarray) -> np.ndarray:
        """The ids of `rows`, end to end in that order."""
        lengths = self.lengths[rows]
        placed = np.cumsum(lengths) - lengths  # where each row's ids go in the result
        shift = np.repeat(self.starts[rows] - placed, lengths)
        return self.token_ids[np.arange(len(shift)) + shift]


@dataclass(frozen=True)
class TokenTypes:
    """The token type ids the tokenizer gives a single text: those of the special tokens its
    post-processor puts before and after the text's tokens, and the text's own. XLNet's gives its
    final <cls> type 2, which its model reads; padding gets the tokenizer's pad type. Types all 0 are
    passed too, as sentence-transformers passes them: BERT and its kin take none as all 0, but XLM and
    FlauBERT add type 0's embedding (a row of their word embeddings, not zero) only when given it."""

    before: np.ndarray  # (special tokens before the text,) int64
    text: int
    after: np.ndarray  # (special tokens after the text,) int64
    pad: int

    @classmethod
    def of(cls, tokenizer: Tokenizer, pad: int) -> TokenTypes:
        probe = tokenizer.encode("a", add_special_tokens=True)
        marks = list(zip(probe.type_ids, probe.special_tokens_mask, strict=True))
        text = [i for i, (_, special) in enumerate(marks) if not special]
        first, last = (text[0], text[-1] + 1) if text else (len(marks), len(marks))
        kinds = np.array([type_id for type_id, _ in marks], dtype=np.int64)
        return cls(kinds[:first], int(kinds[first]) if text else 0, kinds[last:], int(pad))

    @property
    def zero(self) -> bool:
        """Every type id 0, whatever the text (BERT's): made where the model runs, not copied there."""
        return not (self.text or self.pad or self.before.any() or self.after.any())

    def ids(self, lengths: np.ndarray, width: int) -> np.ndarray:
        """(rows, width) type ids of rows holding `lengths` tokens each, padded on the right to `width`."""
        lengths = lengths[:, None]
        at = np.broadcast_to(np.arange(width), (len(lengths), width))  # place in its row
        kinds = np.full((len(lengths), width), self.text, dtype=np.int64)
        before = at < len(self.before)
        kinds[before] = self.before[at[before]]
        from_end = at - (lengths - len(self.after))
        after = (from_end >= 0) & (at < lengths)
        kinds[after] = self.after[from_end[after]]
        kinds[at >= lengths] = self.pad
        return kinds


def _run(piece: str, at_end: bool) -> int:
    """Characters of the run `piece` ends with (starts with, unless `at_end`): whitespace, mixed with
    the one other character nearest that edge (newlines, a line of '=', '- - -').

    Unigram and BPE tokenizers may segment a run by its whole length (a Unigram vocabulary of
    single and paired newlines puts an odd one first; BPE merging pairs from the start leaves it
    last), and not all split at whitespace (Metaspace splits at spaces only, Llama's and Gemma's
    tokenizers nowhere), so a piece cut inside a run may tokenise all of it, and the word before
    it, unlike the whole text.
    """
    strip = str.rstrip if at_end else str.lstrip
    rest = strip(piece)
    edge = rest[-1:] if at_end else rest[:1]
    return len(piece) - len(strip(rest, edge + _SPACES))


def tokenizer_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A private copy with the setting its JSON leaves out: encode_special_tokens (tokenizer_config.json's
    split_special_tokens), under which a text's `<|endoftext|>` is plain text, not the special token."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.encode_special_tokens = tokenizer.encode_special_tokens
    return copy


class TextTokenizer:
    """The model's fast tokenizer, applied as sentence-transformers applies it, with bounded work per text.

    A static embedding model's tokenizer adds no special tokens and may have no window: then
    its texts are tokenised whole, as sentence-transformers does (a huge one in pieces, to
    the same tokens).
    """

    def __init__(
        self,
        folder: ModelFolder,
        max_seq_length: int | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> None:
        if prompt is not None and prompt_name is not None:
            raise ModelFolderError("give a prompt text or a prompt name, not both")
        self.max_seq_length = folder.seq_length(max_seq_length)
        self.prompt = prompt if prompt is not None else folder.prompt(prompt_name)
        self.special_tokens = isinstance(folder.input, TransformerSpec)
        if self.special_tokens:
            from transformers import AutoTokenizer  # here: a launcher planning rows needs no transformers

            try:
                tokenizer = AutoTokenizer.from_pretrained(folder.tokenizer_path, trust_remote_code=False)
            except (OSError, ValueError) as e:  # its files missing: transformers asks for a converter's package
                raise ModelFolderError(
                    f"{folder.tokenizer_path}: its tokenizer cannot be loaded ({' '.join(str(e).split())}); is "
                    "tokenizer.json missing?"
                ) from e
            if not tokenizer.is_fast:
                raise ModelFolderError(f"{folder.tokenizer_path}: needs a fast tokenizer (tokenizer.json)")
            if set(tokenizer.get_vocab()) <= set(tokenizer.all_special_tokens):
                # Its files missing, transformers builds one of the special tokens alone: every word [UNK].
                raise ModelFolderError(
                    f"{folder.tokenizer_path}: its tokenizer holds only its {len(tokenizer)} special tokens; its "
                    "vocabulary files (tokenizer.json, vocab.txt, ...) are missing"
                )
            self.pad_id = tokenizer.pad_token_id or 0
            # Private copy: the transformers wrapper resets truncation on its backend at every call.
            self.raw = tokenizer_copy(tokenizer.backend_tokenizer)
            special_ids = set(tokenizer.all_special_ids)
            side = tokenizer.truncation_side  # tokenizer_config.json's, as transformers reads it
            # sentence-transformers passes on the type ids where the tokenizer gives them
            pad_type = tokenizer.pad_token_type_id if "token_type_ids" in tokenizer.model_input_names else None
        else:
            self.pad_id = 0  # a static model's rows are never padded
            self.raw = Tokenizer.from_file(str(folder.tokenizer_path / "tokenizer.json"))
            special_ids, pad_type = set(), None
            side = (self.raw.truncation or {}).get("direction", "right")
        # A window that keeps a long text's end, as sentence-transformers does for such a tokenizer.
        self.keeps_end = str(side).lower() == "left"
        self.raw.no_padding()
        self.raw.no_truncation()
        self.token_types = None if pad_type is None else TokenTypes.of(self.raw, pad_type)
        if folder.do_lower_case:
            self.raw.normalizer = _lower_cased(self.raw.normalizer)
        self._window = tokenizer_copy(self.raw)
        if self.max_seq_length is not None:
            self._window.enable_truncation(self.max_seq_length, direction="left" if self.keeps_end else "right")
        # The prompt tokenised alone as a text is, cut to the window: sentence-transformers measures it so,
        # and a prompt filling the window leaves out all but the window's last token.
        prompt_ids = self._window.encode(self.prompt, add_special_tokens=self.special_tokens).ids if self.prompt else []
        # The prompt's tokens with the leading special token, as sentence-transformers counts them.
        self.prompt_length = len(prompt_ids) - bool(prompt_ids and prompt_ids[-1] in special_ids)

    def as_embedded(self, text: str) -> str:
        return self.prompt + text

    def _all_embedded(self, texts: pa.Array) -> list[str]:
        """`as_embedded` of every text, joined in Arrow (of the texts' string type): only the results
        become Python strings."""
        if self.prompt:
            texts = pc.binary_join_element_wise(pa.scalar(self.prompt, texts.type), texts, pa.scalar("", texts.type))
        return texts.to_pylist()

    def encode(self, texts: list[str] | pa.Array) -> Tokenized:
        """Token ids of each text as embedded, cut at `max_seq_length` tokens.

        A text longer than CHARS_PER_TOKEN x max_seq_length characters (MIN_PREFIX_CHARS at least) is first cut
        to that many; when the piece overflows the window and the window's tokens end in the first
        half of what precedes the run the piece ends in, they are those of the whole text.
        Otherwise the bound grows fourfold until they do, or the text is taken whole, or the bound
        reaches MAX_TOKENIZED_CHARS: then the window's tokens are that piece's, and the text counts
        as truncated. A window that keeps a text's end takes a suffix instead, when the window's
        tokens start in the second half of what follows the run it starts with. Given an Arrow
        array, only those pieces ever become Python strings.
        """
        texts = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())
        if pa.types.is_string_view(texts.type):  # Arrow's string kernels take string and large_string
            texts = texts.cast(pa.large_string())
        if self.max_seq_length is None:
            return self._encode_whole(texts)
        limit = max(CHARS_PER_TOKEN * self.max_seq_length, MIN_PREFIX_CHARS)
        lengths = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
        pieces = self._piece_of(texts, limit)
        cut = np.flatnonzero(lengths > limit).tolist()
        views = self._all_embedded(pieces)
        # Offsets are only read for cut texts: the others skip computing them (about 1.3x faster).
        encodings = self._encode_batch(views)
        for i in cut:
            encodings[i] = self._window.encode(views[i], add_special_tokens=self.special_tokens)
        read_in_part, most = [], max(limit, MAX_TOKENIZED_CHARS)  # a window of over 2^18 tokens starts past it
        for i in cut:
            bound, piece = limit, pieces[i].as_py()
            while len(piece) < lengths[i] and not self._holds_window(encodings[i], piece):
                if bound == most:
                    read_in_part.append(i)
                    break
                bound = min(4 * bound, most)
                piece = self._piece_of(texts.slice(i, 1), bound)[0].as_py()
                encodings[i] = self._window.encode(self.as_embedded(piece), add_special_tokens=self.special_tokens)
        tokenized = _tokenized(encodings)
        tokenized.truncated[read_in_part] = True
        return tokenized

    def _encode_whole(self, texts: pa.Array) -> Tokenized:
        """Every token of each text, texts over WHOLE_PIECE_CHARS tokenised in overlapping pieces."""
        views = self._all_embedded(texts)
        huge = np.flatnonzero(pc.utf8_length(texts).to_numpy(zero_copy_only=False) > WHOLE_PIECE_CHARS).tolist()
        stitched = {i: self._stitched(views[i]) for i in huge}
        for i in huge:
            views[i] = ""
        return _tokenized(self._encode_batch(views), stitched)

    def _stitched(self, view: str) -> np.ndarray:
        """The ids of `view` tokenised whole, from pieces of WHOLE_PIECE_CHARS that overlap the next.

        Only a static model takes texts whole, and it adds no special tokens, so pieces join end to
        end: at a token both neighbours start, with the same id, where both are trusted (see `_join`).
        """
        pieces = self._pieces(view)
        _, held = next(pieces)
        kept, since = [], 0  # since: where the held piece's tokens are taken from
        for start, piece in pieces:
            join = _join(held, piece, start)
            kept.append(held[0][(held[1] >= since) & (held[1] < join)])
            held, since = piece, join
        kept.append(held[0][held[1] >= since])
        return np.concatenate(kept)

    def _pieces(self, view: str) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        """Where each piece of a text over WHOLE_PIECE_CHARS starts, and its token ids and starts in `view`."""
        starts = range(0, len(view) - WHOLE_OVERLAP_CHARS, WHOLE_PIECE_CHARS)  # the last reaches the end
        for group in (starts[i : i + WHOLE_GROUP] for i in range(0, len(starts), WHOLE_GROUP)):
            pieces = [view[start : start + WHOLE_PIECE_CHARS + WHOLE_OVERLAP_CHARS] for start in group]
            for start, encoding in zip(group, self._window.encode_batch(pieces, add_special_tokens=False), strict=True):
                ids = np.array(encoding.ids, dtype=np.int64)
                yield start, (ids, np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)[:, 0] + start)

    def _piece_of(self, texts: pa.Array, chars: int) -> pa.Array:
        """Each text's first `chars` characters, or its last where the window keeps a text's end."""
        return pc.utf8_slice_codeunits(texts, -chars) if self.keeps_end else pc.utf8_slice_codeunits(texts, 0, chars)

    def _holds_window(self, encoding: Encoding, piece: str) -> bool:
        """Whether a piece's tokens in the window are the whole text's: it overflows the window, and the
        window's tokens lie in the half of the piece away from the cut, not counting a run at the cut
        while the piece is under MAX_RUN_CHARS. Normalizers, pre-tokenizers and segmentations reach
        a few characters across a cut, or along a run, not that far."""
        if not encoding.overflowing:
            return False
        view = len(self.prompt) + len(piece)
        run = _run(piece, at_end=not self.keeps_end) if len(piece) < MAX_RUN_CHARS else 0
        if self.keeps_end:
            marks = zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
            starts = [start for (start, _), special in marks if not special]
            return min(starts) >= (len(self.prompt) + run + view) // 2
        return max(end for _, end in encoding.offsets) <= (view - run) // 2

    def _encode_batch(self, views: list[str]) -> list[Encoding]:
        encode = getattr(self._window, "encode_batch_fast", self._window.encode_batch)  # tokenizers >= 0.20
        return encode(views, add_special_tokens=self.special_tokens)

    def without_tokens(self, texts: pa.Array) -> np.ndarray:
        """Which texts hold no token the model knows: only characters its tokenizer drops (zero-width
        spaces, control characters, lone combining accents), so the model would see the empty text, the
        same vector for each. Only texts without a letter or a digit are tokenised (they are rare), a piece at a time;
        the rest stay in Arrow, taken to hold a token, as they do with every tokenizer that maps what it does
        not know to an unknown token or to bytes (a BPE without either may drop a letter: such a text is
        embedded as before)."""
        lettered = pc.match_substring_regex(texts, r"[\pL\pN]").to_numpy(zero_copy_only=False)
        candidates = np.flatnonzero(~lettered)
        without = np.zeros(len(texts), dtype=bool)
        if len(candidates):
            without[candidates] = ~self.hold_tokens(texts.take(pa.array(candidates)).to_pylist())
        return without

    def hold_tokens(self, texts: list[str]) -> np.ndarray:
        """Whether each text holds any token, not only characters the tokenizer drops: asked of pieces of
        WHOLE_PIECE_CHARS, in turn, until one does (no cut makes a token of a dropped character). Tokenised
        whole, a 32 Mi-character cell of zero-width spaces took 3.9 GB (MiniLM), a 100 Mi one would take 12."""
        held = np.zeros(len(texts), bool)
        pending, start = list(range(len(texts))), 0
        while pending:
            pieces = [texts[i][start : start + WHOLE_PIECE_CHARS] for i in pending]
            held[pending] = [bool(e.ids) for e in self.raw.encode_batch_fast(pieces, add_special_tokens=False)]
            start += WHOLE_PIECE_CHARS
            pending = [i for i in pending if not held[i] and len(texts[i]) > start]
        return held

    def count(self, texts: list[str]) -> np.ndarray:
        """Tokens the model sees per text; max_seq_length + 1 for any text longer than the window."""
        tokenized = self.encode(texts)
        return tokenized.lengths + tokenized.truncated


def _join(left: tuple[np.ndarray, np.ndarray], right: tuple[np.ndarray, np.ndarray], start: int) -> int:
    """Where the tokens of `left` (ids, starts) give way to those of `right`, the piece from `start`.

    Each piece is trusted a quarter of the overlap away from its edges, where both give a token the
    same id at the same start, nearest the overlap's middle, after it first. A piece holding only
    part of a run (see `_run`) may segment all of it otherwise, so there they disagree and join
    before or past it. A run over the trusted span (8,192 characters), or as many characters the
    tokenizer drops inside a word, leaves none: they join at the middle, where a token or two may
    differ from the whole text's.
    """
    quarter = WHOLE_OVERLAP_CHARS // 4
    middle = start + 2 * quarter
    (left_ids, left_starts), (right_ids, right_starts) = left, right
    common, at_left, at_right = np.intersect1d(left_starts, right_starts, return_indices=True)
    agreed = common[(left_ids[at_left] == right_ids[at_right]) & (abs(common - middle) <= quarter)]
    after, before = agreed[agreed >= middle], agreed[agreed < middle]
    return int(after[0]) if after.size else int(before[-1]) if before.size else middle


def _lower_cased(normalizer: Normalizer | None) -> Normalizer:
    """`normalizer` after the tokenizers library's Lowercase, as sentence-transformers lower-cases for a
    model with do_lower_case: prompt and text together, by the library's rules (Python's str.lower
    differs: a final Greek capital sigma becomes ς there, σ here)."""
    steps = list(normalizer) if isinstance(normalizer, Sequence) else [normalizer] if normalizer else []
    if any(isinstance(step, Lowercase) for step in steps):
        return normalizer
    return Sequence([Lowercase(), *steps])


def _tokenized(encodings: list[Encoding], stitched: dict[int, np.ndarray] | None = None) -> Tokenized:
    """The library gives a list of ids per text: read once, into flat arrays, by C-level iteration.
    `stitched`: the ids of texts tokenised in pieces, put where their empty encodings are."""
    ids = list(map(attrgetter("ids"), encodings))
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    token_ids = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    if stitched:
        rows = sorted(stitched)
        segments, done = [], 0  # the other rows' ids up to each stitched row's, then its own
        for row, at in zip(rows, (np.cumsum(lengths) - lengths)[rows].tolist(), strict=True):
            segments += [token_ids[done:at], stitched[row]]
            done = at
        token_ids = np.concatenate([*segments, token_ids[done:]])
        lengths[rows] = [len(stitched[row]) for row in rows]
    truncated = np.fromiter(map(bool, map(attrgetter("overflowing"), encodings)), dtype=bool, count=len(ids))
    return Tokenized(token_ids, lengths, truncated)
