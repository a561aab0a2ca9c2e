"""What an input shard must hold, checked against each file's own schema."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


class InputError(ValueError):
    """Input the job cannot use; the message names the file and what is wrong."""


@dataclass(frozen=True)
class InputColumns:
    """The input columns the job reads, with the types the outputs will carry."""

    text: str
    id: pa.Field
    # Copied into the embeddings files, in the order asked. The text column may be among them
    # (as string: the text or passage embedded); the id column never, since it is always written.
    carry: tuple[pa.Field, ...] = ()

    @property
    def names(self) -> list[str]:
        """Columns read from every shard."""
        return [self.id.name, self.text, *(f.name for f in self.carry if f.name != self.text)]

    @property
    def typed(self) -> tuple[pa.Field, ...]:
        """Columns whose type every shard must share; the text is checked row by row instead."""
        return (self.id, *(f for f in self.carry if f.name != self.text))


def input_columns(schema: pa.Schema, path: str, text: str, id_: str, carry: tuple[str, ...]) -> InputColumns:
    """Take the job's columns from the first shard's schema, or say which are missing."""
    _require(schema, path, [id_, text, *carry])
    carried = (pa.field(text, pa.string()) if name == text else schema.field(name) for name in dict.fromkeys(carry))
    return InputColumns(text=text, id=schema.field(id_), carry=tuple(f for f in carried if f.name != id_))


def check_shard(schema: pa.Schema, path: str, columns: InputColumns) -> None:
    """Every shard must have the columns, and id/carried columns of the first shard's types.

    The text column's type is not checked here: rows whose text is not a
    string are rejected one by one, not the whole job.
    """
    _require(schema, path, columns.names)
    for expected in columns.typed:
        found = schema.field(expected.name).type
        if found != expected.type:
            raise InputError(f"{path}: column {expected.name!r} is {found}, but other shards have {expected.type}")


def _require(schema: pa.Schema, path: str, names: list[str]) -> None:
    missing = [n for n in names if schema.get_field_index(n) < 0]
    if missing:
        raise InputError(
            f"{path}: column {', '.join(map(repr, missing))} not found; "
            f"columns found: {', '.join(schema.names) or 'none'}"
        )
