"""Passages of real documents (package READMEs, licences, stdlib docstrings), split with the default
model's tokenizer and with tiny BPE ones trained here (byte-level, sentencepiece-style), and checked
exactly: token counts, coverage of every kept character, overlap, boundaries, and texts without
spaces, emoji, one huge word and runs of nothing the tokenizer keeps."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import re
import unicodedata
from collections.abc import Callable

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from encoder.passages import Passages, PassageSplitter
from transforms.model_store import default_model_path

DESCRIBED = (
    "torch",
    "transformers",
    "apache-beam",
    "numpy",
    "tokenizers",
    "sentence-transformers",
    "huggingface-hub",
    "ruff",
    "regex",
    "tqdm",
)
LICENSED = ("transformers", "numpy", "pyarrow", "grpcio")
TERMINATORS = ".!?。！？"
SENTENCE_END = re.compile(r"[.!?]\s|[。！？]")
SPACES = re.compile(r"\s*")
# From the Analects, book 1, with its own punctuation and no spaces.
ANALECTS = (
    "子曰：「學而時習之，不亦說乎？有朋自遠方來，不亦樂乎？人不知而不慍，不亦君子乎？」"
    "有子曰：「其為人也孝弟，而好犯上者，鮮矣；不好犯上，而好作亂者，未之有也。君子務本，本立而道生。"
    "孝弟也者，其為仁之本與！」子曰：「巧言令色，鮮矣仁！」"
    "曾子曰：「吾日三省吾身：為人謀而不忠乎？與朋友交而不信乎？傳不習乎？」"
)
EMOJI = "Launch 🚀 went well 👍🏽 — team 👩‍💻👨‍👩‍👧 cheered 🎉🎉. Flags 🇯🇵🇫🇷 flew; weather ☀️→🌧️! "

Count = Callable[[list[str]], np.ndarray]


def real_documents(min_chars: int = 2000) -> list[str]:
    """Long real texts installed here, in a fixed order; missing ones are skipped."""
    texts = []
    for name in DESCRIBED:
        try:
            meta = importlib.metadata.metadata(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        texts.append(meta.get_payload() or meta["Description"] or "")
    for name in LICENSED:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in sorted((f for f in files if f.name.upper().startswith("LICENSE")), key=str)[:1]:
            texts.append(file.locate().read_text(encoding="utf-8", errors="replace"))
    texts += [inspect.getdoc(module) or "" for module in (re, argparse, json, itertools)]
    return [text for text in texts if len(text) >= min_chars]


@pytest.fixture(scope="module")
def documents() -> list[str]:
    texts = real_documents()
    assert len(texts) >= 10
    return texts


@pytest.fixture(scope="module")
def bert() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(default_model_path())


def counter(tokenizer: Tokenizer, prompt: str = "") -> Count:
    """Tokens the model sees per text, special tokens and prompt included (no truncation)."""
    copy = untruncated(tokenizer)
    return lambda texts: np.array([len(e.ids) for e in copy.encode_batch([prompt + t for t in texts])], np.int64)


@pytest.fixture(scope="module")
def bert_count(bert: PreTrainedTokenizerBase) -> Count:
    return counter(bert.backend_tokenizer)


def trained(documents: list[str], pre_tokenizer: pre_tokenizers.PreTokenizer) -> Tokenizer:
    """A tiny BPE trained here on real lines; byte-level, emoji and CJK come out as several byte tokens."""
    lines = [line for text in documents for line in text.splitlines() if line.strip()][:600]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizer
    alphabet = []
    if isinstance(pre_tokenizer, pre_tokenizers.ByteLevel):
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>"], initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def byte_level(documents: list[str]) -> Tokenizer:
    """GPT-2 style: a word's token carries the space before it."""
    return trained(documents, pre_tokenizers.ByteLevel(add_prefix_space=False))


def trained_count(tokenizer: Tokenizer) -> Count:
    """As a model would: two special tokens around the text's tokens."""
    return lambda texts: np.array([len(e.ids) + 2 for e in tokenizer.encode_batch(texts)], np.int64)


def texts_of(texts: list[str], passages: Passages) -> list[str]:
    return [
        texts[d][s:e]
        for d, s, e in zip(passages.document.tolist(), passages.char_start, passages.char_end, strict=True)
    ]


def kept(char: str) -> bool:
    """Characters a tokenizer keeps: not whitespace, not control or format characters (BERT drops those)."""
    return not char.isspace() and not unicodedata.category(char).startswith("C")


def check(texts: list[str], passages: Passages, count: Count, chunk_tokens: int) -> None:
    """What holds for every split: layout, token counts, and every kept character in some passage."""
    assert passages.document.dtype == np.int64 and passages.chunk.dtype == np.int32
    assert passages.char_start.dtype == np.int64 and passages.char_end.dtype == np.int64
    assert (np.diff(passages.document) >= 0).all()
    per_document = np.bincount(passages.document, minlength=len(texts))
    assert passages.chunk.tolist() == [k for n in per_document for k in range(n)]
    assert (count(texts_of(texts, passages)) <= chunk_tokens).all()
    for d, text in enumerate(texts):
        mine = passages.document == d
        starts, ends = passages.char_start[mine], passages.char_end[mine]
        if not mine.any():
            assert not any(map(kept, text))
            continue
        assert (starts < ends).all() and (np.diff(starts) > 0).all() and (np.diff(ends) > 0).all()
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            assert not text[s].isspace() and not text[e - 1].isspace()
        covered = np.cumsum(np.bincount(starts, minlength=len(text) + 1) - np.bincount(ends, minlength=len(text) + 1))
        assert not any(map(kept, {text[k] for k in np.flatnonzero(covered[: len(text)] == 0).tolist()}))
        assert not any(map(kept, text[: starts[0]]))
        assert not any(map(kept, text[ends[-1] :]))


def untruncated(tokenizer: Tokenizer) -> Tokenizer:
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def document_tokens(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """(tokens, 2) char offsets of the whole text's tokens (`tokenizer` untruncated)."""
    return np.array(tokenizer.encode(text, add_special_tokens=False).offsets, np.int64).reshape(-1, 2)


@pytest.mark.parametrize(("chunk_tokens", "overlap"), [(128, 16), (64, 0), (256, 48)])
def test_real_documents(
    documents: list[str], bert: PreTrainedTokenizerBase, bert_count: Count, chunk_tokens: int, overlap: int
) -> None:
    splitter = PassageSplitter(bert.backend_tokenizer, chunk_tokens, overlap, bert_count)
    assert splitter.content_tokens == chunk_tokens - 2
    passages = splitter.split(documents)
    check(documents, passages, bert_count, chunk_tokens)
    assert (np.bincount(passages.document) > 1).all()
    repeated = 0
    whole = untruncated(bert.backend_tokenizer)
    for d, text in enumerate(documents):
        offsets = document_tokens(whole, text)
        mine = passages.document == d
        for start, end in zip(passages.char_start[mine][1:], passages.char_end[mine][:-1], strict=True):
            shared = int(((offsets[:, 0] >= start) & (offsets[:, 1] <= end)).sum())
            assert shared <= overlap
            assert (shared > 0) == (overlap > 0)
            repeated += shared
    assert passages.overlap_tokens == repeated


def assert_sentence_ends(tokenizer: Tokenizer, texts: list[str], passages: Passages, overlap: int, content: int) -> int:
    """Where a passage's allowed last tokens (overlap .. content - 1 after its first) are followed by a line
    end or a sentence end, the passage ends at a sentence terminator or just before a line end; computed
    from the whole text's tokens. Returns how many passages had one in reach."""
    checked = 0
    whole = untruncated(tokenizer)
    for d, text in enumerate(texts):
        offsets = document_tokens(whole, text)
        mine = np.flatnonzero(passages.document == d)[:-1]
        for start, end in zip(passages.char_start[mine].tolist(), passages.char_end[mine].tolist(), strict=True):
            i = int(np.searchsorted(offsets[:, 0], start))
            assert offsets[i, 0] == start
            low, high = offsets[i + overlap, 1], offsets[i + content, 0]
            if "\n" in text[low:high] or SENTENCE_END.search(text, low - 1, high):
                checked += 1
                assert text[end - 1] in TERMINATORS or "\n" in SPACES.match(text, end).group()
    return checked


@pytest.mark.parametrize(
    "pre_tokenizer",
    [pre_tokenizers.ByteLevel(add_prefix_space=False), pre_tokenizers.ByteLevel(), pre_tokenizers.Metaspace()],
    ids=["gpt2", "roberta", "sentencepiece"],
)
def test_other_tokenizers_real_documents(documents: list[str], pre_tokenizer: pre_tokenizers.PreTokenizer) -> None:
    """Tokens that carry the space before a word, whitespace-only tokens, a space added before a window's
    first word: passages still start and end at non-space characters, overlap, and each ends past the last."""
    tokenizer = trained(documents, pre_tokenizer)
    count = trained_count(tokenizer)
    passages = PassageSplitter(tokenizer, 128, 16, count).split(documents)
    check(documents, passages, count, 128)
    same = passages.document[1:] == passages.document[:-1]
    assert (passages.char_start[1:][same] < passages.char_end[:-1][same]).all()


def test_passages_end_at_lines_and_sentences(
    documents: list[str], bert: PreTrainedTokenizerBase, bert_count: Count
) -> None:
    splitter = PassageSplitter(bert.backend_tokenizer, 128, 16, bert_count)
    passages = splitter.split(documents)
    assert assert_sentence_ends(bert.backend_tokenizer, documents, passages, 16, splitter.content_tokens) > 100


def test_prompt_counts(documents: list[str], bert: PreTrainedTokenizerBase) -> None:
    """The prompt's tokens come off each passage's budget; counted as the spec'd lambda counts them."""

    def count(texts: list[str]) -> np.ndarray:
        return np.array([len(bert("query: " + t, add_special_tokens=True)["input_ids"]) for t in texts])

    splitter = PassageSplitter(bert.backend_tokenizer, 96, 8, count)
    assert splitter.content_tokens == 96 - 4
    texts = documents[:3]
    check(texts, splitter.split(texts), count, 96)


@pytest.mark.parametrize("first", ["as found", "more tokens alone"])
def test_a_prompt_ending_in_a_space_costs_no_token_of_the_text(
    documents: list[str], byte_level: Tokenizer, first: str
) -> None:
    """Alone, `query: ` ends in a token of its space (`Ġ`), which before a word is part of the word's (`Ġword`):
    counted alone, it took a token from every passage, and a text of exactly N tokens was cut in two. So it
    still was where the text's first word is more tokens alone than after a space (`m` `odel`, `Ġmodel`)."""

    def count(texts: list[str]) -> np.ndarray:
        return np.array([len(e.ids) + 2 for e in byte_level.encode_batch(["query: " + t for t in texts])])

    assert byte_level.encode("query: ").tokens[-1] == "Ġ"
    words = documents[0].split()[:30]
    if first == "more tokens alone":
        split_alone = (
            w
            for d in documents
            for w in d.split()
            if len(byte_level.encode(w).ids) > len(byte_level.encode(" " + w).ids)
        )
        words = [next(split_alone), *words]
    text = " ".join(words)
    exactly = int(count([text])[0])  # as the passage's N
    splitter = PassageSplitter(byte_level, exactly, 8, count)
    assert splitter.content_tokens == exactly - 2 - len(byte_level.encode("query:").ids)
    passages = splitter.split([text])
    assert passages.char_start.tolist() == [0] and passages.char_end.tolist() == [len(text)]


def test_guards(bert: PreTrainedTokenizerBase, bert_count: Count) -> None:
    with pytest.raises(ValueError):
        PassageSplitter(bert.backend_tokenizer, 9, 0, bert_count)  # 7 tokens of text
    with pytest.raises(ValueError):
        PassageSplitter(bert.backend_tokenizer, 34, 16, bert_count)  # overlap of half the 32
    with pytest.raises(ValueError):
        PassageSplitter(bert.backend_tokenizer, 34, -1, bert_count)
    assert PassageSplitter(bert.backend_tokenizer, 10, 3, bert_count).content_tokens == 8


def test_caller_tokenizer_settings_do_not_matter(
    documents: list[str], bert: PreTrainedTokenizerBase, bert_count: Count
) -> None:
    """The splitter tokenises with its own copy: truncation or padding on the caller's has no effect."""
    raw = Tokenizer.from_str(bert.backend_tokenizer.to_str())
    raw.enable_truncation(16)
    raw.enable_padding(length=512)
    plain = PassageSplitter(bert.backend_tokenizer, 128, 16, bert_count).split(documents[:2])
    odd = PassageSplitter(raw, 128, 16, bert_count).split(documents[:2])
    assert np.array_equal(plain.char_start, odd.char_start) and np.array_equal(plain.char_end, odd.char_end)


def test_empty_and_tokenless(bert: PreTrainedTokenizerBase, bert_count: Count) -> None:
    splitter = PassageSplitter(bert.backend_tokenizer, 64, 8, bert_count)
    empty = splitter.split([])
    assert len(empty.document) == len(empty.chunk) == len(empty.char_start) == len(empty.char_end) == 0
    assert empty.overlap_tokens == 0 and empty.chunk.dtype == np.int32
    texts = ["", "   \n\t ", "\x00\x01", "\x00\x01" * 5000, "  Hello,\u200b world ☀\ufe0f \n"]
    passages = splitter.split(texts)
    assert passages.document.tolist() == [4]
    assert texts_of(texts, passages) == ["Hello,\u200b world ☀\ufe0f"]  # what BERT drops is kept inside
    check(texts, passages, bert_count, 64)


def test_text_without_spaces(bert: PreTrainedTokenizerBase, bert_count: Count, byte_level: Tokenizer) -> None:
    """Chinese without spaces, longer than a window: passages end at 。 ？ ！ where one is in reach."""
    text = ANALECTS * 60
    for tokenizer, count in [(bert.backend_tokenizer, bert_count), (byte_level, trained_count(byte_level))]:
        splitter = PassageSplitter(tokenizer, 64, 8, count)
        passages = splitter.split([text])
        check([text], passages, count, 64)
        assert len(passages.document) > 20
        assert assert_sentence_ends(tokenizer, [text], passages, 8, splitter.content_tokens) > 20


def test_emoji_byte_level(documents: list[str], byte_level: Tokenizer) -> None:
    """Byte-level BPE cuts an emoji into several tokens with the same offsets: a passage never ends
    among them (with no overlap, no character is in two passages), and passages re-encode losslessly."""
    assert len(byte_level.encode("🚀").ids) > 1
    count = trained_count(byte_level)
    texts = [EMOJI * 200, "🚀" * 3000, documents[0][:20000].replace(" ", " 👍🏽 ")]
    for chunk_tokens, overlap in [(48, 0), (64, 12)]:
        passages = PassageSplitter(byte_level, chunk_tokens, overlap, count).split(texts)
        check(texts, passages, count, chunk_tokens)
        for text in texts_of(texts, passages):
            assert byte_level.decode(byte_level.encode(text).ids) == text
        same = passages.document[1:] == passages.document[:-1]
        shared = passages.char_start[1:][same] < passages.char_end[:-1][same]
        assert not shared.any() if not overlap else shared.all()


def test_one_huge_word(bert: PreTrainedTokenizerBase, bert_count: Count, byte_level: Tokenizer) -> None:
    """A 100,000-character word: one [UNK] for BERT's WordPiece, tens of thousands of byte-level tokens."""
    word = "".join(hashlib.sha256(str(k).encode()).hexdigest() for k in range(1600))[:100_000]
    texts = [f"Before it. {word} after it.", word]
    passages = PassageSplitter(bert.backend_tokenizer, 64, 8, bert_count).split(texts)
    check(texts, passages, bert_count, 64)
    assert texts_of(texts, passages)[-1] == word
    count = trained_count(byte_level)
    passages = PassageSplitter(byte_level, 128, 0, count).split([word])
    check([word], passages, count, 128)
    assert len(passages.document) > 100
    assert (passages.char_start[1:] == passages.char_end[:-1]).all()


def test_runs_without_tokens_and_words_past_the_largest_window(
    bert: PreTrainedTokenizerBase, bert_count: Count
) -> None:
    """A million characters of whitespace, or of characters BERT drops, between two sentences: windows
    double up to their limit and are skipped. A word longer than that limit is cut at the window's edge."""
    splitter = PassageSplitter(bert.backend_tokenizer, 64, 8, bert_count)
    texts = [f"Start here. {gap * 550_000} End there." for gap in (" \n", "\x00\u200b")]
    passages = splitter.split(texts)
    assert texts_of(texts, passages) == ["Start here.", "End there."] * 2
    word = "x" * 1_200_000
    passages = splitter.split([word])
    check([word], passages, bert_count, 64)
    assert len(passages.document) == 2 and passages.char_end[0] == passages.char_start[1]


@pytest.mark.parametrize("gap", ["\n" * 200, " " * 1000, "\n" * 3000])
def test_a_run_of_whitespace_tokens_longer_than_a_passage_starts_the_next_afresh(
    documents: list[str], byte_level: Tokenizer, gap: str
) -> None:
    """Byte-level BPE (Qwen's, GPT-2's) makes tokens of whitespace alone. The passage after the one ending at
    such a run started in its overlap and reached nothing new within the budget: it took the run whole, and
    the recount cut the whole document into passages of 1-4 tokens (2,628 where 31 do), or (a run past the
    window's edge) repeated a passage's end as one of its own. The run needs no covering: the text after it
    is split as if alone."""
    count = trained_count(byte_level)
    splitter = PassageSplitter(byte_level, 128, 16, count)
    prose = documents[0][:3000]
    alone = splitter.split([prose])
    passages = splitter.split([prose + gap + prose])
    check([prose + gap + prose], passages, count, 128)
    shift = len(prose) + len(gap)
    assert passages.char_start.tolist() == [*alone.char_start.tolist(), *(alone.char_start + shift).tolist()]
    assert passages.char_end.tolist() == [*alone.char_end.tolist(), *(alone.char_end + shift).tolist()]
    assert passages.overlaps.tolist() == alone.overlaps.tolist() * 2  # the first after the run repeats nothing


# Qwen2's and Qwen3's pre-tokenizer: punctuation keeps the line ends after it (`.ĊĊ`).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def test_a_token_carrying_the_line_ends_after_it_ends_one_passage_only() -> None:
    """A passage leaves whitespace out of its end, Qwen's `.ĊĊ` carries it in: asked whether it reached past
    the last passage's end, that passage's own last token did, so each passage after it, with whitespace
    alone ahead within its budget, ended there again, a shorter suffix of the one before (18 passages for
    6; 27 of 50 mixed texts with a Gemma-style tokenizer)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(["The end of one part.\n\nThe next part starts here, and it ends.\n\n"] * 50, trainer)
    assert ".ĊĊ" in tokenizer.encode("The end.\n\n\n").tokens
    count = trained_count(tokenizer)
    prose, rest = "The end of one part. " * 30 + "The end.", "The next part starts here."
    text = prose + "\n\n" + "\n" * 100 + rest
    passages = PassageSplitter(tokenizer, 64, 16, count).split([text])
    check([text], passages, count, 64)
    alone = PassageSplitter(tokenizer, 64, 16, count).split([prose])
    assert passages.char_start.tolist() == [*alone.char_start.tolist(), text.index(rest)]
    assert passages.overlaps.tolist() == [*alone.overlaps.tolist(), 0]


def test_passages_counted_longer_alone_are_cut_again(bert: PreTrainedTokenizerBase) -> None:
    """Made-up words of ~40 word pieces each, longer than the overlap: a passage starts mid-word, where
    alone it tokenises into more pieces than in the document. The first count finds passages over the
    limit; the document is split again with a smaller budget until every passage fits."""
    letters = np.random.default_rng(0).choice(list("bcdfghjklmnpqrstvwxz"), size=20_000)
    text = " ".join("".join(letters[k : k + 97]) for k in range(0, len(letters), 97))
    count = counter(bert.backend_tokenizer)
    seen: list[np.ndarray] = []

    def recording(texts: list[str]) -> np.ndarray:
        seen.append(count(texts))
        return seen[-1]

    splitter = PassageSplitter(bert.backend_tokenizer, 64, 24, recording)
    seen.clear()  # the counts of the prompt and special tokens
    passages = splitter.split([text, "short text"])
    check([text, "short text"], passages, count, 64)
    assert seen[0].max() > 64 and len(seen) == 2
    assert not all(text[s - 1].isspace() for s in passages.char_start[passages.document == 0][1:].tolist())


def test_four_megabytes(documents: list[str], bert: PreTrainedTokenizerBase, bert_count: Count) -> None:
    """A 4 MB document is split window by window; every passage fits and nothing kept is left out."""
    text = ("\n\n".join(documents) * 20)[: 4 << 20]
    passages = PassageSplitter(bert.backend_tokenizer, 256, 32, bert_count).split([text, documents[0]])
    check([text, documents[0]], passages, bert_count, 256)
    assert len(passages.document) > 4000
