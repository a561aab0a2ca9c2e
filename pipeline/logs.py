"""How the command lines log: INFO and up, one format, whatever was imported before."""

from __future__ import annotations

import logging


def configure_logging() -> None:
    """INFO lines in one format. A module that logs through the root logger as it is
    imported gives that logger Python's default handler (WARNING and up, `LEVEL:name:message`), and
    basicConfig then does nothing: Beam without its gcp extra does, warning that apitools is missing,
    and the job's own lines (start-up, device) were lost. That default handler is replaced; any
    other (a test harness's) is kept."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler and getattr(handler.formatter, "_fmt", None) == logging.BASIC_FORMAT:
            root.removeHandler(handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def error_line(message: object) -> str:
    """`error: <message>` on one line, the last of stderr: a path in it may hold a newline (a file named so),
    which would otherwise end the line early and put the rest of the name where the error line belongs."""
    return "error: " + str(message).replace("\r", "\\r").replace("\n", "\\n")
