"""Reading texts for sft-predict: plain lines (.txt), CSV/TSV (a text column) or JSONL (a text field).

Rows stream from the file (nothing is held but the current line); an empty or malformed row is an error
naming its file, line and field. The byte count read so far feeds the progress bar.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ServeError

Row = tuple[str, Any]  # (where, text or (text, pair))


class _CountingReader(io.RawIOBase):
    """Counts the bytes read from a binary file, for a progress bar in bytes."""

    def __init__(self, raw):
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.count += n or 0
        return n


def read_texts(
    path: Path, text_column: str = "text", pair_column: str | None = None, counter: list | None = None
) -> Iterator[Row]:
    """Yield (where, text) for each input row; empty or malformed rows are errors naming their line."""
    if not path.is_file():
        raise ServeError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    raw = _CountingReader(path.open("rb"))
    if counter is not None:
        counter.append(raw)
    with io.TextIOWrapper(io.BufferedReader(raw, 1 << 16), encoding="utf-8", newline="") as f:
        try:
            if suffix in (".csv", ".tsv"):
                yield from _read_table(path, f, suffix, text_column, pair_column)
            elif suffix == ".jsonl":
                yield from _read_jsonl(path, f, text_column, pair_column)
            else:  # one text per line
                for n, line in enumerate(f, start=1):
                    yield _checked(f"{path} line {n}", line.rstrip("\r\n"), None)
        except UnicodeDecodeError as e:
            raise ServeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block)") from None


def _read_table(path: Path, f, suffix: str, text_column: str, pair_column: str | None) -> Iterator[Row]:
    reader = csv.DictReader(
        f,
        delimiter="\t" if suffix == ".tsv" else ",",
        quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
    )
    if reader.fieldnames is None:
        raise ServeError(f"{path}: empty file")
    for column in (text_column, pair_column):
        if column and column not in reader.fieldnames:
            raise ServeError(
                f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames)}); "
                f"use --text-column / --text-pair-column"
            )
    try:
        for row in reader:
            yield _row(f"{path} line {reader.line_num}", row, text_column, pair_column)
    except csv.Error as e:
        raise ServeError(f"{path} line {reader.line_num}: malformed {suffix[1:].upper()} ({e})") from None


def _read_jsonl(path: Path, f, text_column: str, pair_column: str | None) -> Iterator[Row]:
    for n, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ServeError(f"{path} line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise ServeError(f"{path} line {n}: expected a JSON object")
        yield _row(f"{path} line {n}", record, text_column, pair_column)


def _row(where: str, record: dict, text_column: str, pair_column: str | None) -> Row:
    text = _checked(where, record.get(text_column), text_column)[1]
    if pair_column:
        return where, (text, _checked(where, record.get(pair_column), pair_column)[1])
    return where, text


def _checked(where: str, text, column: str | None) -> Row:
    field = f" in field {column!r}" if column else ""
    if not isinstance(text, str):
        raise ServeError(f"{where}: missing text{field}")
    if not text.strip():
        raise ServeError(f"{where}: empty text{field}")
    return where, text
