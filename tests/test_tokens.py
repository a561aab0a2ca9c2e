"""Texts are cut to a character bound before tokenising, and the model still sees exactly the
tokens it would see if the whole text had been tokenised."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from encoder import ModelFolderError, read_model_folder
from encoder.tokens import (
    CHARS_PER_TOKEN,
    MAX_RUN_CHARS,
    MAX_TOKENIZED_CHARS,
    WHOLE_OVERLAP_CHARS,
    WHOLE_PIECE_CHARS,
    TextTokenizer,
)
from samples.long_documents import long_documents
from samples.model_families import STATIC, save_family
from tests.conftest import save_tiny_model

REAL = "\n\n".join(text for _, text in long_documents(min_chars=4000)[:4])
LIMIT = CHARS_PER_TOKEN * 256
HARD_TEXTS = {
    "real documents": REAL,
    "whitespace before the words": " " * (3 * LIMIT) + REAL,
    "characters the tokenizer drops": "\x00\x01" * LIMIT + REAL,
    "one 100,000-character word": "y" * 100_000,
    "words of 100 characters, [UNK] each": ("z" * 99 + " ") * 400,
    "text without spaces": "吾輩は猫である。名前はまだ無い。" * 2000,
    "emoji": "🚀🎉🔥" * 20_000,
    "long word after the bound": "word " * (LIMIT // 5 - 3) + "q" * 50_000 + " end",
    "short": "a short text",
}


def whole(tokenizer: TextTokenizer, text: str):
    """The reference: the whole text tokenised, then cut to the window."""
    reference = Tokenizer.from_str(tokenizer.raw.to_str())
    reference.enable_truncation(tokenizer.max_seq_length)
    return reference.encode(tokenizer.as_embedded(text))


@pytest.mark.parametrize("name", list(HARD_TEXTS))
def test_bounded_tokenising_keeps_every_token_the_model_sees(model_path, name):
    tokenizer = TextTokenizer(read_model_folder(model_path))
    text = HARD_TEXTS[name]
    tokenized = tokenizer.encode([text, "another text"])
    reference = whole(tokenizer, text)
    assert tokenized.of([0]).tolist() == reference.ids
    assert tokenized.truncated[0] == bool(reference.overflowing)
    assert tokenized.lengths[0] == len(reference.ids)


def test_the_prompt_and_lower_casing_are_applied_before_cutting(tmp_path):
    path = save_tiny_model(tmp_path / "prompted", {}, prompts={"prompts": {"query": "query: "}})
    folder = read_model_folder(path)
    tokenizer = TextTokenizer(folder, prompt_name="query")
    assert tokenizer.max_seq_length == 64
    text = "Upper Case Words " * 2000
    assert tokenizer.encode([text]).token_ids.tolist() == whole(tokenizer, text).ids
    assert tokenizer.count(["", "query"]).tolist() == [4, 5]  # [CLS] query : [SEP], and one more word
    assert tokenizer.count([text]).tolist() == [65]  # longer than the window: max_seq_length + 1


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.string_view()])
@pytest.mark.parametrize("window", [True, False])
def test_a_prompt_goes_before_texts_of_any_arrow_string_type(tmp_path, kind, window):
    """pipeline.calibrate reads texts as large_string; Parquet readers may give string_view."""
    path = save_tiny_model(tmp_path / "prompted", {}, prompts={"prompts": {"query": "query: "}})
    tokenizer = TextTokenizer(read_model_folder(path), prompt_name="query")
    if not window:
        tokenizer.max_seq_length = None
    texts = ["Upper Case Words " * 300, "short", ""]
    tokenized = tokenizer.encode(pa.array(texts, kind))
    expected = tokenizer.encode(texts)
    assert tokenized.token_ids.tolist() == expected.token_ids.tolist()
    assert tokenized.lengths.tolist() == expected.lengths.tolist()
    assert tokenized.of([1]).tolist() == tokenizer.raw.encode("query: short").ids  # the prompt is there


@pytest.mark.parametrize("max_seq_length", [3, 8, 10])
@pytest.mark.parametrize(
    "text", ["x" * 50_000, "ab" * 30_000, "\u00e9" * 1000, "e\u0301" * 1000, ("w" * 90 + " ") * 50]
)
def test_a_short_window_still_sees_the_whole_texts_tokens(model_path, max_seq_length, text):
    """16 characters a token would cut a 50,000-character word to 48: WordPiece makes pieces of
    those where the whole word is one [UNK]."""
    tokenizer = TextTokenizer(read_model_folder(model_path), max_seq_length)
    assert tokenizer.encode([text]).token_ids.tolist() == whole(tokenizer, text).ids


SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]


def unigram(split: bool) -> Tokenizer:
    """XLM-R-style (Llama-style without `split`: Metaspace splits nowhere): newlines stay in words,
    and a run of newlines, spaces, '=' or '= = =' is segmented in pairs with the odd one first."""
    pieces = [*SPECIAL, "▁", "▁▁", "\n", "\n\n", "=", "==", "=▁", "▁=", *string.ascii_letters]
    backend = Tokenizer(models.Unigram([(piece, -1.0) for piece in pieces], unk_id=3))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always" if split else "first", split=split)
    return backend


def bpe() -> Tokenizer:
    """Gemma-style BPE without a pre-tokenizer: a run is merged into fours from its start, so its end
    depends on its length."""
    merges = [("▁", "▁"), ("▁▁", "▁▁"), ("\n", "\n"), ("\n\n", "\n\n")]
    pieces = [*SPECIAL, "▁", "\n", *string.ascii_letters, *("".join(pair) for pair in merges)]
    backend = Tokenizer(models.BPE({piece: i for i, piece in enumerate(pieces)}, merges, unk_token="<unk>"))
    backend.normalizer = normalizers.Replace(" ", "▁")
    return backend


def folder_with(path: Path, backend: Tokenizer, truncation_side: str) -> Path:
    """A tiny model folder whose tokenizer is `backend`."""
    save_tiny_model(path, {})
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (path / name).unlink(missing_ok=True)
    special = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    PreTrainedTokenizerFast(tokenizer_object=backend, truncation_side=truncation_side, **special).save_pretrained(path)
    return path


RUNS: dict[str, tuple[Callable[[], Tokenizer], str, str]] = {
    "XLM-R-style Unigram, newlines": (lambda: unigram(split=True), "right", "\n"),
    "XLM-R-style Unigram, a line of '='": (lambda: unigram(split=True), "right", "="),
    "Llama-style Unigram, '= = ='": (lambda: unigram(split=False), "right", "= "),
    "Llama-style Unigram, spaces": (lambda: unigram(split=False), "right", " "),
    "Gemma-style BPE keeping the end, newlines": (bpe, "left", "\n"),
    "Gemma-style BPE keeping the end, spaces": (bpe, "left", " "),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_cut_inside_a_run_keeps_every_token_the_model_sees(tmp_path, name):
    """These tokenizers do not split at every whitespace, and tokenise a run by its whole length:
    a piece cut inside a run its window reaches into is not trusted, whatever its run's parity."""
    backend, side, run = RUNS[name]
    path = folder_with(tmp_path / "model", backend(), side)
    tokenizer = TextTokenizer(read_model_folder(path), 16)
    texts = [f"Title{run * length}end" for length in range(2000, 2004)]
    reference = AutoTokenizer.from_pretrained(path)(texts, truncation=True, max_length=16)["input_ids"]
    tokenized = tokenizer.encode(texts)
    assert [tokenized.of([row]).tolist() for row in range(len(texts))] == reference


def pieces_cut(tokenizer: TextTokenizer, monkeypatch) -> list[int]:
    """The character bounds `tokenizer` cuts texts at, as it cuts them."""
    bounds, piece_of = [], tokenizer._piece_of
    monkeypatch.setattr(tokenizer, "_piece_of", lambda texts, chars: bounds.append(chars) or piece_of(texts, chars))
    return bounds


def test_long_prose_is_tokenised_once(model_path, monkeypatch):
    """Real documents: the window's tokens end early in the first piece, which no run ends, so none is cut again."""
    tokenizer = TextTokenizer(read_model_folder(model_path))
    documents = [text for _, text in long_documents(min_chars=2 * LIMIT)]
    bounds = pieces_cut(tokenizer, monkeypatch)
    assert tokenizer.encode(documents).truncated.all()
    assert bounds == [LIMIT]


def test_a_huge_run_is_waited_out_no_further_than_max_run_chars(model_path, monkeypatch):
    """A 4 MB line of '=' is cut at MAX_RUN_CHARS, not tokenised whole: a run that long is not waited out."""
    tokenizer = TextTokenizer(read_model_folder(model_path))
    bounds = pieces_cut(tokenizer, monkeypatch)
    assert tokenizer.encode(["=" * (16 * MAX_RUN_CHARS)]).token_ids.tolist() == whole(tokenizer, "=" * 1000).ids
    assert max(bounds) == MAX_RUN_CHARS


def test_a_text_whose_window_never_fills_is_read_no_further_than_max_tokenized_chars(model_path, monkeypatch):
    """A huge cell of what BERT's tokenizer drops (whitespace, zero-width spaces) is not tokenised
    whole: its first MAX_TOKENIZED_CHARS characters are, and it counts as truncated."""
    tokenizer = TextTokenizer(read_model_folder(model_path))
    bounds = pieces_cut(tokenizer, monkeypatch)
    texts = [" " * MAX_TOKENIZED_CHARS + " beyond", "\u200b" * (MAX_TOKENIZED_CHARS // 2) + " within"]
    tokenized = tokenizer.encode(texts)
    assert tokenized.of([0]).tolist() == whole(tokenizer, "").ids
    assert tokenized.of([1]).tolist() == whole(tokenizer, texts[1]).ids == whole(tokenizer, "within").ids
    assert tokenized.truncated.tolist() == [True, False]
    assert max(bounds) == MAX_TOKENIZED_CHARS


def test_the_ids_of_rows_come_end_to_end_in_the_order_asked(model_path):
    tokenizer = TextTokenizer(read_model_folder(model_path))
    texts = ["first text", "", "a third, longer text of several words", "x"]
    tokenized = tokenizer.encode(texts)
    each = [whole(tokenizer, text).ids for text in texts]
    assert tokenized.of(np.array([2, 0, 3, 2])).tolist() == each[2] + each[0] + each[3] + each[2]
    assert tokenized.of(np.array([], dtype=np.int64)).tolist() == []
    assert tokenized.lengths.tolist() == [len(ids) for ids in each]


def static_folder(path: Path, backend: Tokenizer | None = None) -> Path:
    """A static model's folder whose tokenizer (the default model's, unless `backend`) has no window."""
    save_family(STATIC, path)
    tokenizer_file = next(path.rglob("tokenizer.json"))
    backend = backend or Tokenizer.from_file(str(tokenizer_file))
    backend.no_truncation()
    backend.save(str(tokenizer_file))
    return path


@pytest.fixture(scope="module")
def static_model(tmp_path_factory) -> Path:
    return static_folder(tmp_path_factory.mktemp("static") / "model")


def tokenised_whole(folder: Path, text: str) -> list[int]:
    """The reference: the whole text tokenised at once, as sentence-transformers does for a static model."""
    return Tokenizer.from_file(str(next(folder.rglob("tokenizer.json")))).encode(text, add_special_tokens=False).ids


def stitched(tokenizer: TextTokenizer, monkeypatch) -> list[int]:
    """Characters of each text `tokenizer` tokenises in pieces, as it does."""
    sizes, of = [], tokenizer._stitched
    monkeypatch.setattr(tokenizer, "_stitched", lambda view: sizes.append(len(view)) or of(view))
    return sizes


@pytest.mark.parametrize("name", list(HARD_TEXTS))
def test_a_huge_text_a_static_model_takes_whole_is_tokenised_in_pieces_as_if_whole(static_model, name, monkeypatch):
    """Past WHOLE_PIECE_CHARS a text is tokenised in overlapping pieces (a 100 MB cell at once took
    13 GB): every token is still the whole text's."""
    tokenizer = TextTokenizer(read_model_folder(static_model))
    assert tokenizer.max_seq_length is None
    text = HARD_TEXTS[name] * (2 * WHOLE_PIECE_CHARS // len(HARD_TEXTS[name]) + 2)
    sizes = stitched(tokenizer, monkeypatch)
    tokenized = tokenizer.encode(["before", text, "after"])
    assert sizes == [len(text)]
    assert tokenized.of([1]).tolist() == tokenised_whole(static_model, text)
    assert [tokenized.of([row]).tolist() for row in (0, 2)] == [
        tokenised_whole(static_model, t) for t in ("before", "after")
    ]
    assert not tokenized.truncated.any()


RUN_PLACES = {
    # From before the second piece's start to just past the overlap's middle: only the first holds it whole.
    "into the second piece's start": (WHOLE_PIECE_CHARS - 999, WHOLE_PIECE_CHARS + WHOLE_OVERLAP_CHARS // 2 + 500),
    # From just before the middle to past the first piece's end: only the second holds it whole.
    "past the first piece's end": (
        WHOLE_PIECE_CHARS + WHOLE_OVERLAP_CHARS // 2 - 500,
        WHOLE_PIECE_CHARS + WHOLE_OVERLAP_CHARS + 1000,
    ),
}


@pytest.mark.parametrize("place", list(RUN_PLACES))
@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_across_a_join_of_pieces_keeps_every_token(tmp_path, name, place):
    """A run of either parity lies across the middle of the first two pieces' overlap and one
    piece's edge, where the tokenizers of RUNS segment it by the part they hold: the pieces are
    joined where the one that holds it whole is trusted."""
    backend, _, run = RUNS[name]
    folder = static_folder(tmp_path / "static", backend())
    tokenizer = TextTokenizer(read_model_folder(folder))
    begin, end = RUN_PLACES[place]
    prefix = ("word " * begin)[:begin]
    units = (end - begin) // len(run)
    texts = [f"{prefix}{run * length}end{' tail' * 60_000}" for length in (units, units + 1)]
    tokenized = tokenizer.encode(texts)
    assert [tokenized.of([row]).tolist() for row in range(len(texts))] == [tokenised_whole(folder, t) for t in texts]


def test_texts_tokenised_in_pieces_keep_their_rows(static_model):
    tokenizer = TextTokenizer(read_model_folder(static_model))
    huge = REAL * (WHOLE_PIECE_CHARS // len(REAL) + 1)
    texts = [huge, "before", "", huge[len(huge) // 3 :], "after", huge[: WHOLE_PIECE_CHARS + 1]]
    tokenized = tokenizer.encode(texts)
    assert [tokenized.of([row]).tolist() for row in range(len(texts))] == [
        tokenised_whole(static_model, t) for t in texts
    ]
    assert tokenized.lengths.tolist() == [len(tokenised_whole(static_model, t)) for t in texts]


def test_a_model_folder_without_its_vocabulary_files_is_refused(tmp_path):
    """transformers builds a tokenizer of the special tokens alone when its files are missing: every
    word became [UNK], and every text of a run the same vector."""
    folder = save_family("bert", tmp_path / "model", size="tiny")
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelFolderError) as refused:
        TextTokenizer(read_model_folder(folder))
    assert str(refused.value) == (
        f"{folder}: its tokenizer holds only its 5 special tokens; its vocabulary files "
        "(tokenizer.json, vocab.txt, ...) are missing"
    )
