"""Texts are cut to a character bound before tokenising, and the model still sees exactly the
tokens it would see if the whole text had been tokenised."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from encoder import read_model_folder
from encoder.tokens import CHARS_PER_TOKEN, TextTokenizer
from samples.long_documents import long_documents
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
    assert tokenized.ids[0] == reference.ids
    assert tokenized.truncated[0] == bool(reference.overflowing)
    assert tokenized.lengths[0] == len(reference.ids)


def test_the_prompt_and_lower_casing_are_applied_before_cutting(tmp_path):
    path = save_tiny_model(tmp_path / "prompted", {}, prompts={"prompts": {"query": "query: "}})
    folder = read_model_folder(path)
    tokenizer = TextTokenizer(folder, prompt_name="query")
    assert tokenizer.max_seq_length == 64
    text = "Upper Case Words " * 2000
    assert tokenizer.encode([text]).ids[0] == whole(tokenizer, text).ids
    assert tokenizer.count(["", "query"]).tolist() == [4, 5]  # [CLS] query : [SEP], and one more word
    assert tokenizer.count([text]).tolist() == [65]  # longer than the window: max_seq_length + 1


@pytest.mark.parametrize("max_seq_length", [3, 8, 10])
@pytest.mark.parametrize(
    "text", ["x" * 50_000, "ab" * 30_000, "\u00e9" * 1000, "e\u0301" * 1000, ("w" * 90 + " ") * 50]
)
def test_a_short_window_still_sees_the_whole_texts_tokens(model_path, max_seq_length, text):
    """16 characters a token would cut a 50,000-character word to 48: WordPiece makes pieces of
    those where the whole word is one [UNK]."""
    tokenizer = TextTokenizer(read_model_folder(model_path), max_seq_length)
    assert tokenizer.encode([text]).ids[0] == whole(tokenizer, text).ids
