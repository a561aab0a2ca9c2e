"""Make the calibration file that int8 and uint8 vectors need: each dimension's range on a set of texts.

    python -m pipeline.calibrate --output calibration.json [--model M] [--truncate_dim D]
        [--max_seq_length N] [--chunk_tokens N [--chunk_overlap N]]
        [--input 'kb/*.parquet' --text_column text] [--rows 10000]

Run it once per model (and truncation and prompt), keep the file, and pass it to every night's
run as `--calibration`: the ranges never change between runs, so int8 vectors of different
nights are comparable and reused ones stay valid. The file names the model's weights (sha256)
and the prompt; a run with other weights or another prompt refuses it. The texts are the first `--rows` non-empty
texts of `--input`, or by default the project's synthetic knowledge base (`samples/`): use
your own corpus where you can. With the job's `--max_seq_length` and `--chunk_tokens`, the texts
are cut and embedded as the job would: a passage's vector ranges as the job's passages do, not as
the truncated start of a whole document.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from encoder import ModelFolderError, PooledEncoder
from encoder.folder_digest import folder_sha256
from encoder.passages import PassageSplitter
from encoder.quantize import CalibratedModel, Calibration, CalibrationError
from pipeline.logs import error_line
from pipeline.options import UsageError
from pipeline.plan import check_model_settings, chunking, match_inputs, texts_cut
from samples.knowledge_base import make_rows
from schemas.inputs import InputError, without_views
from transforms.model_store import model_folder
from transforms.read import open_parquet
from transforms.validate import text_as_strings

DEFAULT_ROWS = 10_000
SAMPLE_SEED = 20_261_202  # the built-in calibration texts, the same on every machine


def calibration_texts(
    patterns: list[str], text_column: str, rows: int, without_tokens: Callable[[pa.Array], np.ndarray] | None = None
) -> pa.Array:
    """The first `rows` non-empty string texts of the inputs, or the built-in sample's; with `without_tokens`
    (the model's TextTokenizer.without_tokens), of those holding a token, as the job embeds (no_tokens)."""
    if not patterns:
        return make_rows(rows, seed=SAMPLE_SEED).column("text").combine_chunks()
    texts = []
    for file in match_inputs(patterns):
        parquet = open_parquet(file.path)
        if text_column not in parquet.schema_arrow.names:
            raise InputError(f"{file.path}: no column {text_column!r} (--text_column)")
        for batch in parquet.iter_batches(columns=[text_column]):
            column, _ = text_as_strings(batch.column(0).cast(without_views(batch.column(0).type)))
            if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
                raise InputError(f"{file.path}: column {text_column!r} is {column.type}, not text")
            kept = column.filter(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0))
            if without_tokens is not None:
                kept = kept.filter(pa.array(~without_tokens(kept)))
            texts.append(kept.cast(pa.large_string()))  # shards may hold string or large_string
            if sum(map(len, texts)) >= rows:
                return pa.concat_arrays(texts)[:rows]
    return pa.concat_arrays(texts) if texts else pa.array([], pa.large_string())  # files without rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="where to write the calibration file (local or gs://)")
    parser.add_argument("--model", default=None, help="model folder, local or gs:// (default: all-MiniLM-L6-v2)")
    parser.add_argument("--truncate_dim", type=int, default=None, help="as the job's --truncate_dim")
    parser.add_argument("--prompt_name", default=None, help="as the job's --prompt_name")
    parser.add_argument("--prompt", default=None, help="as the job's --prompt")
    parser.add_argument("--max_seq_length", type=int, default=None, help="as the job's --max_seq_length")
    parser.add_argument("--chunk_tokens", type=int, default=None, help="as the job's --chunk_tokens")
    parser.add_argument("--chunk_overlap", type=int, default=None, help="as the job's --chunk_overlap")
    parser.add_argument("--input", default="", help="Parquet files (comma-separated globs) to take texts from")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"texts to embed (default {DEFAULT_ROWS})")
    args = parser.parse_args(argv)
    if args.rows < 2:  # one text gives every dimension a range of one value: no levels to read back
        parser.error(f"--rows {args.rows}: calibrate on at least 2 texts (default {DEFAULT_ROWS})")
    patterns = [p.strip() for p in args.input.split(",") if p.strip()]
    try:
        print(calibrate(args, patterns))
    except UsageError as e:  # as the job: settings the model cannot honour
        print(error_line(e), file=sys.stderr)
        return 2
    except (InputError, ModelFolderError, CalibrationError) as e:
        print(error_line(e), file=sys.stderr)
        return 1
    return 0


def calibrate(args: argparse.Namespace, patterns: list[str]) -> str:
    """Writes the calibration file; returns what was written."""
    folder = model_folder(args.model)
    weights = folder.weights_sha256()  # checks them whole, before any text is embedded
    check_model_settings(folder, args.prompt, args.prompt_name, args.truncate_dim, args.max_seq_length)
    passages = chunking(args, folder)
    encoder = PooledEncoder(
        folder,
        "auto",
        max_seq_length=args.max_seq_length,
        prompt_name=args.prompt_name,
        prompt=args.prompt,
        truncate_dim=args.truncate_dim,
    )
    texts = calibration_texts(patterns, args.text_column, args.rows, encoder.tokenizer.without_tokens)
    where = f"column {args.text_column!r} of --input {args.input}" if patterns else "the built-in sample"
    if len(set(texts)) < 2:
        raise InputError(
            f"{len(set(texts))} different text(s) holding a token in {where}; calibration needs at least 2"
        )
    if passages:
        documents = texts.to_pylist()
        tokens = encoder.tokenizer
        splitter = PassageSplitter(tokens.raw, passages.tokens, passages.overlap, tokens.count)
        texts = pa.array(splitter.split(documents).texts(documents), pa.large_string())
        if len(set(texts)) < 2:  # texts of no tokens (zero-width spaces) give no passage
            raise InputError(f"{len(set(texts))} different passage(s) of the texts in {where}; calibration needs 2")
    cut = texts_cut(passages, folder.seq_length(args.max_seq_length))
    made_for = CalibratedModel(weights, encoder.tokenizer.prompt, folder_sha256(folder.path), cut)
    calibration = Calibration.of(encoder.encode(texts).embeddings, made_for)
    try:
        with FileSystems.create(args.output) as f:
            f.write(calibration.to_json().encode())
    except OSError as e:  # Beam's BeamIOError too
        raise InputError(f"--output {args.output}: cannot write there ({e})") from e
    embedded = "passages" if passages else "texts"
    return f"{args.output}: ranges of {encoder.dim} dimensions over {calibration.texts} {embedded}"


if __name__ == "__main__":
    sys.exit(main())
