"""Long documents through the whole job with --chunk_tokens: passages, their output, nightly reuse by
passage, option checks, and carried columns of any Arrow type."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sentence_transformers import SentenceTransformer
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from encoder import read_model_folder
from encoder.passages import PassageSplitter
from encoder.tokens import TextTokenizer
from pipeline.options import EmbedOptions, UsageError
from pipeline.plan import chunking
from pipeline.run import make_options
from samples.long_documents import long_documents
from tests.conftest import ROOT, assert_same_output, read_manifest, record, run_cli, run_clis, write_parquet
from tests.test_passages import real_documents, trained
from tests.test_tokens import static_folder
from transforms.passages import Chunking

N, M = 128, 16
CHUNKING = ("--chunk_tokens", str(N), "--chunk_overlap", str(M))
# Real text without spaces, and emoji, beside the real English documents.
JAPANESE = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
    "ニャーニャー泣いていた事だけは記憶している。吾輩はここで始めて人間というものを見た。"
)
EMOJI = "Deploy finished 🚀🎉 but the dashboard shows 🔥 errors 😱; rollback ⏪ done ✅. "


def docs() -> dict[str, str]:
    real = long_documents(min_chars=6000)[:5]
    texts = {f"doc-{i}": text for i, (_, text) in enumerate(real)}
    texts["cjk"] = JAPANESE * 30
    texts["emoji"] = EMOJI * 60
    texts["word"] = "x" * 100_000
    texts["short"] = "One short answer."
    return texts


@pytest.fixture(scope="module")
def tokenizer(model_path):
    return AutoTokenizer.from_pretrained(model_path)


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def passages_by_document(output) -> dict[str, list[dict]]:
    table = pq.read_table(sorted(output.glob("embeddings-*.parquet")))
    by_document: dict[str, list[dict]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r["id"], r["chunk"])):
        by_document.setdefault(row["id"], []).append(row)
    return by_document


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    texts = docs()
    write_parquet(root / "in" / "docs.parquet", id=list(texts), text=list(texts.values()), title=list(texts))
    result = run_cli(
        "--input", str(root / "in" / "docs.parquet"), "--output", str(root / "out"),
        "--carry_columns", "title,text", *CHUNKING,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root, texts, result


def test_passages_cover_every_document_within_the_token_limit(chunked, tokenizer):
    root, texts, result = chunked
    by_document = passages_by_document(root / "out")
    assert sorted(by_document) == sorted(texts)
    schema = pq.read_schema(sorted((root / "out").glob("embeddings-*.parquet"))[0])
    assert schema.names == ["id", "chunk", "char_start", "char_end", "title", "text", "content_hash", "embedding"]
    assert (schema.field("chunk").type, schema.field("char_start").type) == (pa.int32(), pa.int64())
    for id_, passages in by_document.items():
        text = texts[id_]
        assert [p["chunk"] for p in passages] == list(range(len(passages)))
        assert passages[0]["char_start"] == len(text) - len(text.lstrip())
        assert passages[-1]["char_end"] == len(text.rstrip())
        for p, following in zip(passages, passages[1:], strict=False):
            assert following["char_start"] <= p["char_end"]  # no gap: every character is in a passage
            assert following["char_start"] > p["char_start"]
        for p in passages:
            assert p["text"] == text[p["char_start"] : p["char_end"]]
            assert p["title"] == id_
            assert p["content_hash"] == hashlib.sha256(p["text"].encode()).hexdigest()
            assert count(tokenizer, p["text"]) <= N
    assert len(by_document["short"]) == 1 and len(by_document["doc-0"]) > 5
    # The 100,000-character word is one [UNK] for this tokenizer: a single passage.
    assert [(p["char_start"], p["char_end"]) for p in by_document["word"]] == [(0, 100_000)]


def test_consecutive_passages_overlap_by_at_most_the_overlap(chunked, tokenizer):
    root, texts, _ = chunked
    for id_, passages in passages_by_document(root / "out").items():
        spans = np.array(tokenizer(texts[id_], return_offsets_mapping=True)["offset_mapping"][1:-1]).reshape(-1, 2)
        for p, following in zip(passages, passages[1:], strict=False):
            # The document's tokens inside both passages.
            shared = ((spans[:, 0] >= following["char_start"]) & (spans[:, 1] <= p["char_end"])).sum()
            assert shared <= M, (id_, p["chunk"])
            if id_.startswith("doc-"):
                assert shared > 0, (id_, p["chunk"])  # prose: the overlap is there


def test_passages_end_at_a_line_or_sentence_end_when_the_window_has_one(chunked):
    root, texts, _ = chunked
    checked = 0
    for id_, passages in passages_by_document(root / "out").items():
        text = texts[id_]
        for previous, p in zip(passages[1:-2], passages[2:-1], strict=True):
            new = text[previous["char_end"] + 2 : p["char_end"]]  # past the previous passage
            if "\n" in new or ". " in new or "。" in new:
                end = p["char_end"]
                gap = text[end : len(text) - len(text[end:].lstrip())]
                assert "\n" in gap or text[end - 1] in ".!?。！？", (id_, p["chunk"], text[end - 30 : end + 5])
                checked += 1
    assert checked > 20


def test_the_manifest_counts_documents_in_and_passages_out(chunked):
    root, texts, result = chunked
    manifest = read_manifest(root / "out")
    by_document = passages_by_document(root / "out")
    per_document = sorted(len(p) for p in by_document.values())
    total = sum(per_document)
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_rejected"]) == (len(texts), len(texts), 0)
    assert manifest["rows_out"] == total
    assert manifest["passages"]["embedded"] == total and manifest["passages"]["reused"] == 0
    assert manifest["passages"]["per_document"] == {
        "min": per_document[0],
        "median": float(np.median(per_document)),
        "max": per_document[-1],
    }
    assert manifest["passages"]["overlap_tokens"] > 0
    assert manifest["rows_truncated"] == 0
    assert (manifest["model"]["chunk_tokens"], manifest["model"]["chunk_overlap"]) == (N, M)
    # Without a prompt the splitting rules are those of every run since passages began: their vectors are reused.
    assert manifest["model"]["splitter"] == "passages-1"
    assert f"embedded {len(texts)} of {len(texts)} rows" in result.stdout
    assert f"as {total} passages ({total} embedded, 0 reused, 0 deleted)" in result.stdout


def test_passage_vectors_equal_sentence_transformers(chunked, model_path):
    root, _, _ = chunked
    rows = [p for passages in passages_by_document(root / "out").values() for p in passages]
    reference = SentenceTransformer(model_path, device="cpu").encode(
        [p["text"] for p in rows], normalize_embeddings=True, batch_size=64
    )
    got = np.array([p["embedding"] for p in rows], dtype=np.float32)
    assert (got * reference).sum(axis=1).min() >= 0.9999


def edit_one_paragraph(text: str) -> tuple[str, int]:
    """The text with a sentence added to a paragraph in its middle, and where the edit is."""
    breaks = [i for i in range(len(text) // 3, 2 * len(text) // 3) if text.startswith("\n\n", i)]
    at = breaks[len(breaks) // 2]
    return text[:at] + " This sentence was added overnight." + text[at:], at


def test_a_nightly_run_embeds_only_the_passages_around_an_edit(tmp_path, tokenizer):
    real = [text for _, text in long_documents(min_chars=8000)[:3]]
    kept, edited, gone = real
    day_one = write_parquet(tmp_path / "day1.parquet", id=["kept", "edited", "gone"], text=real)
    first = run_cli("--input", str(day_one), "--output", str(tmp_path / "out1"), *CHUNKING)
    assert first.returncode == 0, first.stderr
    changed, at = edit_one_paragraph(edited)
    day_two = write_parquet(
        tmp_path / "day2.parquet", id=["kept", "edited", "new"], text=[kept, changed, "A new page, short."]
    )
    second = run_cli(
        "--input", str(day_two), "--output", str(tmp_path / "out2"), "--previous", str(tmp_path / "out1"), *CHUNKING
    )
    assert second.returncode == 0, second.stderr

    before, after = passages_by_document(tmp_path / "out1"), passages_by_document(tmp_path / "out2")
    vectors_before = {p["content_hash"]: p["embedding"] for p in before["kept"] + before["edited"]}
    embedded_files = [p for p in sorted((tmp_path / "out2").glob("embeddings-*.parquet")) if "-reused-" not in p.name]
    embedded = pq.read_table(embedded_files).to_pylist()
    edited_now = {p["content_hash"] for p in embedded if p["id"] == "edited"}
    # Exactly the edited document's passages with new text went through the model, and they hold the edit.
    assert edited_now == {p["content_hash"] for p in after["edited"]} - set(vectors_before)
    # They are a few consecutive passages, from the one holding the edit or the one before it: the
    # passages after resume the previous run's boundaries.
    chunks = [p["chunk"] for p in after["edited"] if p["content_hash"] in edited_now]
    holding = [p["chunk"] for p in after["edited"] if p["char_start"] <= at < p["char_end"]]
    assert chunks == list(range(chunks[0], chunks[0] + len(chunks)))
    assert chunks[0] in (holding[0] - 1, holding[0]) and holding[-1] in chunks
    assert len(chunks) <= 5 and 4 * len(chunks) < len(after["edited"])
    for p in after["edited"]:
        if p["content_hash"] not in edited_now:
            assert (
                np.array(p["embedding"], np.float32).tobytes()
                == np.array(vectors_before[p["content_hash"]], np.float32).tobytes()
            )
    assert [p["embedding"] for p in after["kept"]] == [p["embedding"] for p in before["kept"]]

    manifest = read_manifest(tmp_path / "out2")
    assert (manifest["rows_in"], manifest["rows_embedded"], manifest["rows_reused"]) == (3, 2, 1)
    assert (manifest["rows_deleted"], manifest["rows_rejected"]) == (1, 0)
    keys_before = {(id_, p["chunk"]) for id_, ps in before.items() for p in ps}
    keys_after = {(id_, p["chunk"]) for id_, ps in after.items() for p in ps}
    assert manifest["passages"] == {
        **manifest["passages"],
        "embedded": len(edited_now) + len(after["new"]),
        "reused": len(after["kept"]) + len(after["edited"]) - len(edited_now),
        "deleted": len(keys_before - keys_after),
    }
    assert len(before["gone"]) <= manifest["passages"]["deleted"]

    # The change set: passages whose text or place in the document moved are upserted, keys gone deleted.
    def placed(passages: dict) -> dict:
        fields = ("content_hash", "char_start", "char_end")
        return {(id_, p["chunk"]): tuple(p[f] for f in fields) for id_, ps in passages.items() for p in ps}

    then, now = placed(before), placed(after)
    upserts = pq.read_table([tmp_path / "out2" / name for name in manifest["files"]["upserts"]]).to_pylist()
    assert sorted((p["id"], p["chunk"]) for p in upserts) == sorted(k for k in now if then.get(k) != now[k])
    moved = [p for p in upserts if p["content_hash"] in vectors_before]  # after the edit: same text, moved
    assert moved and manifest["changes"]["restated"] == len(moved)
    deletes = pq.read_table([tmp_path / "out2" / name for name in manifest["files"]["deletes"]])
    gone = zip(deletes["id"].to_pylist(), deletes["chunk"].to_pylist(), strict=True)
    assert sorted(gone) == sorted(keys_before - keys_after)

    # Other chunking settings: every passage is embedded again, with a warning naming the setting.
    third = run_cli(
        "--input", str(day_two), "--output", str(tmp_path / "out3"), "--previous", str(tmp_path / "out1"),
        "--chunk_tokens", "96", "--chunk_overlap", str(M),
    )  # fmt: skip
    assert third.returncode == 0, third.stderr
    assert read_manifest(tmp_path / "out3")["passages"]["reused"] == 0
    assert "chunk_tokens 128 -> 96" in third.stderr and "re-embedding every row" in third.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--chunk_tokens", "300"), "--chunk_tokens 300 is more than the model's limit of 256 tokens"),
        (("--chunk_tokens", "9"), "--chunk_tokens 9 is too small: special tokens and prompt take 2 tokens"),
        (("--chunk_tokens", "64", "--chunk_overlap", "31"), "--chunk_overlap 31 must be at least 0 and less than 31"),
        (("--chunk_overlap", "8"), "--chunk_overlap needs --chunk_tokens"),
    ],
)
def test_impossible_chunk_settings_exit_2_naming_the_limit(tmp_path, options, message):
    shard = write_parquet(tmp_path / "in.parquet", id=[1], text=["some text"])
    result = run_cli("--input", str(shard), "--output", str(tmp_path / "out"), *options)
    assert result.returncode == 2
    assert f"error: {message}" in result.stderr
    assert not (tmp_path / "out").exists()
    record("input", f"{' '.join(options)}", "exit 2, names the limit")


@pytest.mark.parametrize("tokens", [10, 11, 34, 64, 65, 66, 67, 128, 256])
def test_every_chunk_setting_the_plan_accepts_is_one_the_splitter_takes(model_path, tokens):
    folder = read_model_folder(model_path)
    splitter_for = TextTokenizer(folder)

    def plan(*overlap: str) -> Chunking:
        argv = ["--input", "in.parquet", "--output", "out", "--chunk_tokens", str(tokens), *overlap]
        return chunking(make_options(argv).view_as(EmbedOptions), folder)

    default = plan()
    largest = -(-(tokens - 2) // 2) - 1  # under half of the tokens left by [CLS] and [SEP]
    assert default.overlap == min(32, largest)
    assert plan("--chunk_overlap", str(largest)).overlap == largest
    with pytest.raises(UsageError, match=f"--chunk_overlap {largest + 1} must be at least 0 and less than"):
        plan("--chunk_overlap", str(largest + 1))
    for overlap in (default.overlap, largest):
        PassageSplitter(splitter_for.raw, tokens, overlap, splitter_for.count)  # raises on what it cannot honour


@pytest.mark.parametrize("name", ["content_hash", "embedding", "chunk", "char_end"])
def test_a_carried_column_named_like_a_written_one_is_refused_before_workers_start(tmp_path, name):
    shard = write_parquet(tmp_path / "in.parquet", id=[1], text=["some text"], **{name: ["x"]})
    result = run_cli("--input", str(shard), "--output", str(tmp_path / "out"), "--carry_columns", name, *CHUNKING)
    assert result.returncode == 1
    assert f"error: --carry_columns '{name}': the job writes a column of that name" in result.stderr
    assert "Worker" not in result.stderr
    record("input", f"carried column named {name}", "refused before any worker starts")


ODD_TYPES = {
    "ts": pa.array([1795560000123456789, None, -1, 7], pa.timestamp("ns")),
    "tz": pa.array([1, 2, 3, 4], pa.timestamp("us", tz="Europe/Paris")),
    "price": pa.array([Decimal("123456789012.123456789"), None, Decimal("-1.5"), Decimal(0)], pa.decimal128(38, 9)),
    "tags": pa.array([["a", "b"], [], None, ["d"]], pa.list_(pa.string())),
    "meta": pa.array([{"k": 1, "v": [1.5]}, None, {"k": 3, "v": []}, {"k": None, "v": None}],
                     pa.struct([("k", pa.int64()), ("v", pa.list_(pa.float64()))])),
    "blob": pa.array([b"\x00\xff", b"", None, b"\x80" * 3], pa.binary()),
    "when": pa.array([1, 2, 3, 4], pa.duration("ns")),
    "kind": pa.array(["doc", "ticket", "doc", None]).dictionary_encode(),
}  # fmt: skip


@pytest.mark.parametrize("chunking", [(), CHUNKING], ids=["rows", "passages"])
def test_carried_columns_of_any_arrow_type_pass_through_bit_for_bit(tmp_path, chunking):
    texts = ["first row. " * 300, "second", "third row", "fourth " * 200]
    table = pa.table({"id": ["a", "b", "c", "d"], "text": texts, **ODD_TYPES})
    pq.write_table(table, tmp_path / "in.parquet")
    names = ",".join(["id", "text", *ODD_TYPES])
    result = run_cli(
        "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--carry_columns", names, *chunking
    )
    assert result.returncode == 0, result.stderr
    out = pq.read_table(sorted((tmp_path / "out").glob("embeddings-*.parquet")))
    source = pq.read_table(tmp_path / "in.parquet")
    assert (
        out.schema.names[: 1 + 3 * bool(chunking)]
        == ["id", "chunk", "char_start", "char_end"][: 1 + 3 * bool(chunking)]
    )
    positions = {id_: i for i, id_ in enumerate(source["id"].to_pylist())}
    take = pa.array([positions[i] for i in out["id"].to_pylist()])
    for name in ODD_TYPES:
        assert out.schema.field(name).type == source.schema.field(name).type
        assert out[name].combine_chunks().equals(source[name].combine_chunks().take(take)), name
    expected = [
        texts[positions[i]][s:e] if chunking else texts[positions[i]]
        for i, s, e in zip(
            out["id"].to_pylist(),
            out["char_start"].to_pylist() if chunking else [0] * out.num_rows,
            out["char_end"].to_pylist() if chunking else [None] * out.num_rows,
            strict=True,
        )
    ]
    assert out["text"].to_pylist() == expected
    record("input", f"carried odd Arrow types, {'passages' if chunking else 'rows'}",
           "carried bit for bit", [tmp_path / "in.parquet"], tmp_path / "out")  # fmt: skip


def test_runs_whose_prompt_merges_into_the_text_name_the_splitting_rules_that_join_what_fits(tmp_path):
    """Since 2026-12-08, where the prompt's last token merges into a text's first word (`passage: ` before a
    byte-level BPE's `Ġword`), a document the model counts as fitting is one passage: the same settings may
    split a text otherwise than before, so those runs name other rules (and re-embed once). Other runs split
    as before (WordPiece keeps no token of the prompt's space; without a prompt nothing merges)."""
    write_parquet(tmp_path / "in.parquet", id=[1], text=["A short text."])
    byte_level = static_folder(
        tmp_path / "byte-level", trained(real_documents(), pre_tokenizers.ByteLevel(add_prefix_space=False))
    )
    runs = (("passage: ", ["--model", str(byte_level)]), ("query:", ["--model", str(byte_level)]), ("passage: ", []))
    plans = run_clis(
        *(
            ["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--chunk_tokens", "64",
             "--prompt", prompt, "--plan_only", *model]
            for prompt, model in runs
        )
    )  # fmt: skip
    assert [plan.returncode for plan in plans] == [0, 0, 0], [plan.stderr for plan in plans]
    assert [json.loads(plan.stdout)["model"]["splitter"] for plan in plans] == [
        "passages-2",
        "passages-1",
        "passages-1",
    ]


def test_the_job_killed_then_rerun_gives_the_same_passages(tmp_path):
    real = [text for _, text in long_documents(min_chars=4000)[:8]]
    shard = write_parquet(tmp_path / "in.parquet", id=[f"d{i}" for i in range(len(real))], text=real)
    command = [
        sys.executable, "-m", "pipeline.run", "--input", str(shard), "--rows_per_batch", "2", *CHUNKING,
    ]  # fmt: skip
    started = time.monotonic()
    reference = subprocess.run([*command, "--output", str(tmp_path / "ref")], cwd=ROOT, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    moment = 0.6 * (time.monotonic() - started)  # past start-up: passages are being embedded or written
    job = subprocess.Popen(
        [*command, "--output", str(tmp_path / "out")], cwd=ROOT, stderr=subprocess.DEVNULL, start_new_session=True
    )
    time.sleep(moment)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    if not (tmp_path / "out" / "manifest.json").exists():
        rerun = subprocess.run([*command, "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
    assert_same_output(tmp_path / "out", tmp_path / "ref")
    record("fault", f"passages: job SIGKILLed at {moment:.1f}s", "rerun identical", [shard], tmp_path / "out")
