"""Reading labeled text: local CSV/TSV/JSON/JSONL/Parquet files or a hub dataset, checked row by row.

Every row keeps where it came from ("train.csv line 7") so a bad value is reported at its place.
CSV/TSV/JSON(L) are parsed here for exact line numbers; Parquet and hub datasets go through `datasets`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

TEXT_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt"}


@dataclass
class Table:
    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    where: list[str]  # for each row, "FILE line N" (or "FILE row N")


def read_table(spec: str, *, role: str = "train") -> Table:
    """Read a file (by suffix) or, when no such file exists, a hub dataset `name[:split]`."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise InputError(f"{spec}: is a directory, expected a data file")
    if not path.exists():
        if suffix in TEXT_SUFFIXES or "/" not in spec and ":" not in spec:
            raise InputError(f"{spec}: file not found (a hub dataset is written NAME:SPLIT or OWNER/NAME)")
        return _read_hub(spec, role)
    readers = {
        ".csv": _read_delimited,
        ".tsv": _read_delimited,
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".parquet": _read_parquet,
    }
    if suffix not in readers:
        raise InputError(
            f"{spec}: unsupported file type {suffix or '(none)'} (csv, tsv, json, jsonl, parquet)"
        )
    try:
        table = readers[suffix](path)
    except UnicodeDecodeError as e:
        raise InputError(f"{spec}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not table.rows:
        raise InputError(f"{spec}: no data rows")
    return table


def _read_delimited(path: Path) -> Table:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # GLUE-style TSV files contain bare quotes inside text: read them literally.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: empty file") from None
        header = [h.strip() for h in header]
        rows, where = [], []
        for values in reader:
            if not values or values == [""]:
                continue
            line = reader.line_num
            if len(values) != len(header):
                raise InputError(f"{path} line {line}: expected {len(header)} fields, found {len(values)}")
            rows.append(dict(zip(header, values, strict=False)))
            where.append(f"{path} line {line}")
    return Table(str(path), header, rows, where)


def _read_jsonl(path: Path) -> Table:
    rows, where = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path} line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path} line {n}: expected a JSON object, found {type(record).__name__}")
            rows.append(record)
            where.append(f"{path} line {n}")
    return Table(str(path), _columns(rows), rows, where)


def _read_json(path: Path) -> Table:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        if e.lineno > 1 or path.read_text(encoding="utf-8").count("\n") > 1:
            # Probably JSON Lines saved as .json: try that before giving up.
            try:
                return _read_jsonl(path)
            except InputError:
                pass
        raise InputError(f"{path} line {e.lineno}: malformed JSON ({e.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"{path}: expected a JSON list of objects (or JSON Lines)")
    return Table(str(path), _columns(data), data, [f"{path} record {i + 1}" for i in range(len(data))])


def _read_parquet(path: Path) -> Table:
    import datasets

    try:
        ds = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as e:  # pyarrow raises many types for a bad file
        raise InputError(
            f"{path}: cannot read Parquet ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    rows = ds.to_list()
    return Table(str(path), list(ds.column_names), rows, [f"{path} row {i + 1}" for i in range(len(rows))])


def _read_hub(spec: str, role: str) -> Table:
    import datasets

    name, _, split = spec.partition(":")
    split = split or ("train" if role == "train" else "validation")
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{spec}: not a local file and not loadable as hub dataset {name!r} split {split!r} ({first})"
        ) from None
    rows = ds.to_list()
    return Table(spec, list(ds.column_names), rows, [f"{spec} row {i + 1}" for i in range(len(rows))])


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list[str] | None  # label values as strings; None for unlabeled input
    where: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, part: slice) -> Examples:
        return Examples(
            self.texts[part],
            self.pairs[part] if self.pairs is not None else None,
            self.labels[part] if self.labels is not None else None,
            self.where[part],
        )


def extract_examples(
    table: Table, text_column: str, label_column: str | None, text_pair_column: str | None = None
) -> Examples:
    """Pull text (and pair, label) columns out of a table, refusing missing columns and empty values."""
    for option, column in (
        ("--text-column", text_column),
        ("--text-pair-column", text_pair_column),
        ("--label-column", label_column),
    ):
        if column is not None and column not in table.columns:
            raise InputError(
                f"{table.source}: no column {column!r} for {option} "
                f"(columns: {', '.join(map(str, table.columns))})"
            )
    texts, pairs, labels = [], [] if text_pair_column else None, [] if label_column else None
    for row, where in zip(table.rows, table.where, strict=False):
        texts.append(_text(row, text_column, where))
        if pairs is not None:
            pairs.append(_text(row, text_pair_column, where))
        if labels is not None:
            value = row.get(label_column)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise InputError(f"{where}: empty label in column {label_column!r}")
            labels.append(label_key(value))
    return Examples(texts, pairs, labels, list(table.where))


def _text(row: dict[str, Any], column: str, where: str) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        if value is None:
            raise InputError(f"{where}: missing text in column {column!r}")
        value = str(value)
    if not value.strip():
        raise InputError(f"{where}: empty text in column {column!r}")
    return value


def label_key(value: Any) -> str:
    """Labels are compared as strings; 1, "1" and 1.0 name the same class."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class LabelMap:
    """Class names <-> ids, built from the training labels (numeric names sort numerically)."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.ids = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def from_labels(cls, labels: list[str]) -> LabelMap:
        unique = set(labels)
        numeric = all(_is_int(v) for v in unique)
        return cls(sorted(unique, key=(lambda v: int(v)) if numeric else None))

    def encode(self, labels: list[str], where: list[str], column: str) -> list[int]:
        out = []
        for label, w in zip(labels, where, strict=False):
            if label not in self.ids:
                raise InputError(
                    f"{w}: label {label!r} in column {column!r} is not one of the training "
                    f"labels ({', '.join(self.names)})"
                )
            out.append(self.ids[label])
        return out

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def label2id(self) -> dict[str, int]:
        return dict(self.ids)


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True
