"""Documents cut into passages of at most N tokens as the model counts them, overlapping, at the best boundary.

Nothing here knows about Beam. A document is tokenised a window of characters at a
time, so a 64 MB text never has all its tokens (nor the tokenizer's per-byte
alignments) in memory at once. Passages end at the strongest boundary the token
budget allows (blank line, then line or sentence end, then space, then any token
boundary), never inside a character, and are then counted as the model sees them:
a document with a passage over the limit is cut again with a smaller budget.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from encoder.tokens import tokenizer_copy

MIN_CONTENT_TOKENS = 8
# Characters tokenised at a time: at least this many, and this many per token of a passage.
WINDOW_CHARS, WINDOW_CHARS_PER_TOKEN = 4096, 32
# Passages counted per call of count_tokens: a huge document's passages are never all tokenised at once.
COUNT_BATCH = 2048
# In a window without whitespace to end at, tokens ending in this fraction of it are taken as the text's.
SOLID_STABLE_FRACTION = 0.9
# A window grows at most this many times its first width (4096 to 1M characters); one that still
# holds too few tokens (a huge word WordPiece makes one [UNK] of) is split as if the text ended there.
MAX_WINDOW_GROWTH = 256

# Unicode White_Space, as code points; a lookup table one past the largest, whose last entry is False.
_SPACE_POINTS = [*range(9, 14), 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
_NEWLINE_POINTS = [*range(10, 14), 0x85, 0x2028, 0x2029]
_TABLE_SIZE = max(_SPACE_POINTS) + 2
_IS_SPACE = np.zeros(_TABLE_SIZE, bool)
_IS_SPACE[_SPACE_POINTS] = True
_IS_NEWLINE = np.zeros(_TABLE_SIZE, bool)
_IS_NEWLINE[_NEWLINE_POINTS] = True
_SPACE_CHARS = "".join(map(chr, _SPACE_POINTS))
_SOLID_RUN = re.compile(f"[^{re.escape(_SPACE_CHARS)}]*")
_SENTENCE_ENDS = np.array([ord(c) for c in ".!?"], np.uint32)  # end a sentence when whitespace follows
_CJK_SENTENCE_ENDS = np.array([ord(c) for c in "。！？"], np.uint32)  # end a sentence whatever follows
# Boundary levels between two tokens: a passage ends at the highest one its budget reaches.
INSIDE, TOKEN, SPACE, LINE, PARAGRAPH = range(5)


@dataclass(frozen=True)
class Passages:
    """Passages of a list of documents, in document then text order."""

    document: np.ndarray  # int64, index of the source text in the input list, ascending
    chunk: np.ndarray  # int32, 0-based passage number within its document, in text order
    char_start: np.ndarray  # int64, offsets into the document's text in Unicode code points (Python slicing)
    char_end: np.ndarray  # int64; passage text = texts[document][char_start:char_end]
    overlaps: np.ndarray  # int64, document tokens each passage repeats at its start from the end of the previous one

    @property
    def overlap_tokens(self) -> int:
        """Document tokens repeated at the start of a passage from the end of the previous one, summed."""
        return int(self.overlaps.sum())

    def texts(self, documents: list[str]) -> list[str]:
        """Each passage's text, sliced from the documents it was split from."""
        spans = zip(self.document.tolist(), self.char_start.tolist(), self.char_end.tolist(), strict=True)
        return [documents[d][start:end] for d, start, end in spans]


@dataclass(frozen=True)
class _Split:
    """One document's passages, as character spans."""

    starts: list[int]
    ends: list[int]
    overlaps: list[int]  # per passage, as Passages.overlaps


def _window_chars(budget: int) -> int:
    return max(WINDOW_CHARS, WINDOW_CHARS_PER_TOKEN * budget)


def _trimmed(window: str, offsets: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The span from the first to the last non-whitespace character inside a token, if any, with
    the characters dropped by the tokenizer right after the last one (as `_Window.end_with_dropped`)."""
    solid = [(s, t) for s, e in offsets if (t := window[s:e]).strip(_SPACE_CHARS)]
    if not solid:
        return None
    (first, head), (last, tail) = solid[0], solid[-1]
    start = first + len(head) - len(head.lstrip(_SPACE_CHARS))
    return start, _SOLID_RUN.match(window, last + len(tail.rstrip(_SPACE_CHARS))).end()


class _Window:
    """The tokens of one window of text, with where a passage may start and end among them.

    A token's span is trimmed of whitespace (byte-level and sentencepiece tokens carry
    the space before a word; some tokens are whitespace alone): a passage neither starts
    nor ends with whitespace, and whitespace-only tokens are no place to start or end one.
    """

    def __init__(self, window: str, offsets: list[tuple[int, int]]) -> None:
        points = np.frombuffer(window.encode("utf-32-le"), np.uint32)
        table = np.minimum(points, _TABLE_SIZE - 1)
        space, newline = _IS_SPACE[table], _IS_NEWLINE[table]
        newline[:-1] &= (points[:-1] != 13) | (points[1:] != 10)  # "\r\n" is one line end
        spaces = np.concatenate(([0], np.cumsum(space)))
        newlines = np.concatenate(([0], np.cumsum(newline)))
        spans = np.array(offsets, np.int64).reshape(-1, 2)
        n = len(spans)
        solid = np.append(np.flatnonzero(~space), len(points))
        self.start = solid[np.searchsorted(solid, spans[:, 0])]
        last = np.searchsorted(solid, spans[:, 1]) - 1
        self.end = np.where(last >= 0, solid[np.maximum(last, 0)] + 1, 0)
        self.valid = self.start < self.end
        index = np.arange(n)
        # following[k]: the first valid token after k (n if none); preceding[k]: the last valid one before k (-1).
        self.following = np.append(np.minimum.accumulate(np.where(self.valid, index, n)[::-1])[::-1], n)[1:]
        preceding = np.concatenate(([-1], np.maximum.accumulate(np.where(self.valid, index, -1))))[:n]
        gap_start = self.end
        gap_end = np.append(self.start, len(points))[self.following]
        inside = gap_end < gap_start  # the next token starts inside this one's last character
        gap_end = np.maximum(gap_end, gap_start)
        gap_spaces = spaces[gap_end] - spaces[gap_start]
        gap_newlines = newlines[gap_end] - newlines[gap_start]
        last_char = points[np.maximum(self.end - 1, 0)]
        sentence = (np.isin(last_char, _SENTENCE_ENDS) & (gap_spaces > 0)) | np.isin(last_char, _CJK_SENTENCE_ENDS)
        after = np.select(
            [gap_newlines >= 2, (gap_newlines > 0) | sentence, gap_spaces > 0], [PARAGRAPH, LINE, SPACE], TOKEN
        )
        after[inside | ~self.valid] = INSIDE
        self.after = after  # level of the boundary after each token: INSIDE where no passage may end
        # A passage ending at a token takes the characters the tokenizer dropped right after it
        # (variation selectors, accents BERT strips), up to whitespace or the next token.
        space_at = np.append(np.flatnonzero(space), len(points))
        self.end_with_dropped = np.maximum(
            np.minimum(space_at[np.searchsorted(space_at, gap_start)], gap_end), gap_start
        )
        self.before = np.where(self.valid & (preceding >= 0), after[np.maximum(preceding, 0)], INSIDE)
        valid = np.flatnonzero(self.valid)
        self.first = int(valid[0]) if len(valid) else n  # where the window's first passage starts
        self._last = int(valid[-1]) if len(valid) else -1
        self._space_at = space_at[:-1]
        self._length = len(points)
        self._token_ends = spans[:, 1]

    def stop(self, final: bool) -> int:
        """One past the last token passages may use: the last valid token when the window ends
        the text; otherwise the leading tokens that tokenise the same in the whole text."""
        if final:
            return self._last + 1
        if len(self._space_at) and self._space_at[-1] >= self._length // 2:
            # Pre-tokenizers split at whitespace first: tokens ending before the last space are the text's.
            return _leading(self._token_ends <= self._space_at[-1])
        # No whitespace to end at (one long word, text without spaces): a word cut at the window's
        # edge tokenises differently near the cut only.
        return min(_leading(self._token_ends <= SOLID_STABLE_FRACTION * self._length), len(self._token_ends) - 1)

    def first_new(self, done: int) -> int:
        """The first token a passage may end at (not whitespace alone) that ends past character `done`; the
        number of tokens when there is none."""
        # Asked of where tokens end whitespace left out, as passages end (a byte-level `.ĊĊ` ends at its `.`):
        # asked of the raw end, the last passage's own last token reached past it, and each passage after it
        # ended there again, nested in it.
        new = int(np.searchsorted(self.end, done, side="right"))
        return int(self.following[new - 1]) if new else self.first

    def end_of(self, i: int, budget: int, overlap: int, stop: int, done: int) -> int:
        """The last token of the passage starting at token i: the last of the highest boundaries among
        tokens i + overlap .. i + budget - 1 (all before `stop - 1`) that end past character `done`.

        `done` is where the previous passage ended: a window that starts inside the overlap can
        tokenise it into more tokens than the previous window did (a word cut, a prefix space added).
        """
        new = int(np.searchsorted(self.end, done, side="right"))  # the first token ending past it (as first_new)
        low = min(max(i + overlap, new), i + budget - 1)
        levels = self.after[low : i + budget]
        best = levels.max()
        if best > INSIDE:
            return low + int(np.flatnonzero(levels == best)[-1])
        # Only whitespace tokens or pieces of one character: end earlier, else just past the budget.
        first = max(i, new)
        earlier = np.flatnonzero(self.after[first:low] > INSIDE)
        if len(earlier):
            return first + int(earlier[-1])
        later = np.flatnonzero(self.after[i + budget : stop] > INSIDE)
        return i + budget + int(later[0]) if len(later) else stop - 1

    def next_start(self, i: int, j: int, overlap: int) -> int:
        """Where the passage after tokens i..j starts: `overlap` tokens back, moved forward to the
        first word start, else the first token boundary; with neither, just after j."""
        lowest = max(j + 1 - overlap, i + 1)
        levels = self.before[lowest : j + 1]
        for level in (SPACE, TOKEN):
            found = np.flatnonzero(levels >= level)
            if len(found):
                return lowest + int(found[0])
        return int(self.following[j])

    def resume_at(self, i: int, done: int) -> int:
        """The character where the next window starts: passage start i, else `done`, where the last passage
        ended (the window holds no token of text after it)."""
        return int(self.start[i]) if i < len(self.start) else done


def _leading(mask: np.ndarray) -> int:
    """How many leading entries of `mask` are true."""
    false = np.flatnonzero(~mask)
    return int(false[0]) if len(false) else len(mask)


def overlap_limit(content_tokens: int) -> int:
    """Overlap tokens must be fewer than this: under half of the text tokens a passage holds, so
    that each passage moves on by more than it repeats."""
    return -(-content_tokens // 2)


class PassageSplitter:
    """Cuts documents into passages of at most `chunk_tokens` tokens as `count_tokens` counts them,
    consecutive passages sharing up to `overlap` tokens."""

    def __init__(
        self, tokenizer: Tokenizer, chunk_tokens: int, overlap: int, count_tokens: Callable[[list[str]], np.ndarray]
    ) -> None:
        # A private copy: truncation or padding set on the caller's tokenizer would cut or pad windows.
        self._tokenizer = tokenizer_copy(tokenizer)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._chunk_tokens = chunk_tokens
        self._overlap = overlap
        self._count_tokens = count_tokens
        self._content_tokens = chunk_tokens - self._tokens_around_text()
        if self._content_tokens < MIN_CONTENT_TOKENS or not 0 <= overlap < overlap_limit(self._content_tokens):
            raise ValueError(
                f"chunk_tokens={chunk_tokens} leaves {self._content_tokens} tokens of text per passage "
                f"(at least {MIN_CONTENT_TOKENS}), with overlap={overlap} (0 or more, under half of that)"
            )

    def _tokens_around_text(self) -> int:
        """The tokens a passage holds besides its text's: the special tokens and the prompt's. A prompt ending
        in a space (E5's `passage: `) counted alone ends in a token of that space (`▁`, `Ġ`), which before a
        word is part of the word's (`▁word`): counted so, every passage held a token less than it may, and
        a text of exactly N tokens was cut in two. The fewer of the prompt alone and with a one-token word."""
        alone = int(self._count_tokens([""])[0])
        word = int(self._count_tokens(["a"])[0]) - len(self._tokenizer.encode("a", add_special_tokens=False).ids)
        self._prompt_merges = word < alone
        return min(alone, word)

    @property
    def prompt_merges(self) -> bool:
        """Whether the prompt's last token merges into a text's first word (`Ġ` + `word`): only then are two
        passages that the model counts as fitting joined (`_join_pairs_that_fit`)."""
        return self._prompt_merges

    @property
    def content_tokens(self) -> int:
        """Document tokens a passage may hold: chunk_tokens less the prompt's and special tokens."""
        return self._content_tokens

    def split(self, texts: list[str]) -> Passages:
        """Passages of every text; a text without tokens has none.

        Tokenising a passage alone can give a token or two more than its slice of the
        document (a word cut mid-way, byte-level BPE's leading space): a document with a
        passage over chunk_tokens is split again with its budget lowered by the excess.
        """
        budgets = np.full(len(texts), self._content_tokens, np.int64)
        splits = [_Split([], [], [])] * len(texts)
        todo = np.arange(len(texts))
        while len(todo):
            found = self._split_documents([texts[d] for d in todo], budgets[todo])
            for d, split in zip(todo.tolist(), found, strict=True):
                splits[d] = split
            owners = np.repeat(np.arange(len(todo)), [len(splits[d].starts) for d in todo])
            units = [
                texts[d][s:e] for d in todo.tolist() for s, e in zip(splits[d].starts, splits[d].ends, strict=True)
            ]
            excess = np.zeros(len(todo), np.int64)
            np.maximum.at(excess, owners, self._count(units) - self._chunk_tokens)
            over = (excess > 0) & (budgets[todo] > 1)
            budgets[todo[over]] = np.maximum(budgets[todo[over]] - excess[over], 1)
            todo = todo[over]
        self._join_pairs_that_fit(texts, splits)
        counts = np.array([len(s.starts) for s in splits], np.int64)
        first = np.cumsum(counts) - counts
        return Passages(
            document=np.repeat(np.arange(len(texts), dtype=np.int64), counts),
            chunk=(np.arange(counts.sum()) - np.repeat(first, counts)).astype(np.int32),
            char_start=np.array([p for s in splits for p in s.starts], np.int64),
            char_end=np.array([p for s in splits for p in s.ends], np.int64),
            overlaps=np.array([n for s in splits for n in s.overlaps], np.int64),
        )

    def _join_pairs_that_fit(self, texts: list[str], splits: list[_Split]) -> None:
        """One passage for a document cut in two that the model counts as at most chunk_tokens, prompt and
        all. Its text is counted alone, where its first word may take a token more than after the prompt's
        space (byte-level BPE's `m` `odel` against `Ġmodel`), and a text of exactly N tokens was cut in two.
        Only where the prompt's last token merges so (without one, texts split as they always did), and
        within one window: wider, the two were cut around a run without tokens (which stays out of both)
        or at a window's edge."""
        if not self._prompt_merges:
            return
        window = _window_chars(self._content_tokens)
        pairs = [
            d for d, split in enumerate(splits) if len(split.starts) == 2 and split.ends[1] - split.starts[0] <= window
        ]
        spans = [texts[d][splits[d].starts[0] : splits[d].ends[1]] for d in pairs]
        for d, fits in zip(pairs, (self._count(spans) <= self._chunk_tokens).tolist(), strict=True):
            if fits:
                splits[d] = _Split([splits[d].starts[0]], [splits[d].ends[1]], [0])

    def _count(self, units: list[str]) -> np.ndarray:
        counts = [self._count_tokens(units[k : k + COUNT_BATCH]) for k in range(0, len(units), COUNT_BATCH)]
        return np.concatenate([np.zeros(0, np.int64), *counts]).astype(np.int64)

    def _split_documents(self, texts: list[str], budgets: np.ndarray) -> list[_Split]:
        """Splits with one batch call for every text's first window (most texts fit in one)."""
        widths = [_window_chars(b) for b in budgets.tolist()]
        windows = [t[:w] for t, w in zip(texts, widths, strict=True)]
        firsts = self._tokenizer.encode_batch(windows, add_special_tokens=False)
        return [self._split_document(t, b, e) for t, b, e in zip(texts, budgets.tolist(), firsts, strict=True)]

    def _split_document(self, text: str, budget: int, encoding: Encoding | None) -> _Split:
        """Greedy passages of `budget` document tokens, one window of text at a time.

        A window is redone twice as wide when it holds too few of the text's tokens for a
        whole passage (long runs of whitespace, characters the tokenizer drops, one huge token).
        """
        overlap = min(self._overlap, (budget - 1) // 2)
        base = _window_chars(budget)
        starts: list[int] = []
        ends: list[int] = []
        overlaps: list[int] = []
        repeated = 0  # tokens the next passage repeats from the end of the last one
        pos, width = 0, base
        while True:
            window = text[pos : pos + width]
            final = pos + width >= len(text)
            grown = width >= base * MAX_WINDOW_GROWTH
            if encoding is None:
                encoding = self._tokenizer.encode(window, add_special_tokens=False)
            offsets, encoding = encoding.offsets, None
            if (final or grown) and len(offsets) <= budget:  # the rest of the window is one passage
                span = _trimmed(window, offsets)
                if span is not None:
                    starts.append(pos + span[0])
                    ends.append(pos + span[1])
                    overlaps.append(repeated)
            else:
                tokens = _Window(window, offsets)
                i, stop = tokens.first, tokens.stop(final)
                cut = not final and stop - i <= budget  # too few of the text's tokens for a passage
                if cut and not grown:
                    width *= 2
                    continue
                if cut:  # grown to its limit: split as if the text ended at the window's edge
                    stop = tokens.stop(True)
                while stop - i > budget:
                    done = (ends[-1] if ends else 0) - pos
                    ahead = tokens.first_new(done)
                    if ahead >= i + budget:
                        # Whitespace tokens alone (a run of blank lines, of spaces) fill the budget past the
                        # last passage: the next starts after them, repeating nothing, as they need no covering.
                        i, repeated = ahead, 0
                        continue
                    j = tokens.end_of(i, budget, overlap, stop, done)
                    starts.append(pos + int(tokens.start[i]))
                    ends.append(pos + int(tokens.end_with_dropped[j]))
                    overlaps.append(repeated)
                    i = tokens.next_start(i, j, overlap)
                    repeated = max(j + 1 - i, 0)
                done = (ends[-1] if ends else 0) - pos
                if not (final or cut):  # the next window starts with the next passage
                    pos += tokens.resume_at(i, done)
                    width = base
                    continue
                if i < stop and tokens.first_new(done) < stop:  # else nothing but whitespace is left
                    starts.append(pos + int(tokens.start[i]))
                    ends.append(pos + int(tokens.end_with_dropped[stop - 1]))
                    overlaps.append(repeated)
            if final:
                break
            pos += width  # past a window grown to its limit; the next one starts that wide
            repeated = 0
        return _Split(starts, ends, overlaps)
