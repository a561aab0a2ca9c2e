"""Print the flex template's metadata.json from the job's own options.

    python deploy/dataflow/metadata.py > deploy/dataflow/metadata.json

Every option of `python -m pipeline.run` becomes a template parameter with its
--help text, so the template cannot drift from the job; tests/test_deploy.py
fails when the checked-in file is out of date.
"""

from __future__ import annotations

import argparse
import json

from pipeline.options import DESCRIPTION, DEVICES, SWITCH, EmbedOptions, interval_seconds, positive_int, sha256_hex

REQUIRED = "(required) "
# Options for a person at a terminal: a template launch has nowhere to show the plan --plan_only prints,
# and launching without a job graph would fail opaquely.
BY_HAND = ("plan_only",)
# Options of a job service in the launcher's process (--job_endpoint=embed), which Dataflow never runs.
NOT_ON_DATAFLOW = ("worker_start_timeout",)
_DECIMAL = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # as float() reads one, not inf or nan
# What the template's own check refuses by an option's type: a mistyped number fails the launch at once,
# not in the launcher minutes later (exit 2).
TYPE_REGEXES = {
    SWITCH["type"]: "^(true|false)$",
    sha256_hex: "^[0-9a-fA-F]{64}$",
    int: r"^\+?[0-9]+$",  # the job's counts: none negative
    positive_int: r"^\+?0*[1-9][0-9]*$",
    float: _DECIMAL,
    interval_seconds: _DECIMAL,
}


def metadata() -> dict:
    parser = argparse.ArgumentParser(add_help=False)
    EmbedOptions._add_argparse_args(parser)
    parameters = []
    for action in (a for a in parser._actions if a.dest not in BY_HAND + NOT_ON_DATAFLOW):
        parameter = {
            "name": action.dest,
            "label": action.dest.replace("_", " ").capitalize(),
            "helpText": action.help.removeprefix(REQUIRED),
            "isOptional": not action.help.startswith(REQUIRED),
        }
        if action.choices:
            parameter["regexes"] = [f"^({'|'.join(action.choices)})$"]
        elif action.dest == "device":
            parameter["regexes"] = [f"^({DEVICES})$"]
        elif action.type in TYPE_REGEXES:
            parameter["regexes"] = [TYPE_REGEXES[action.type]]
        parameters.append(parameter)
    return {"name": "Parquet embedding job", "description": DESCRIPTION, "parameters": parameters}


if __name__ == "__main__":
    print(json.dumps(metadata(), indent=2))
