"""Batch prediction over a file: plain lines (.txt), CSV/TSV (a text column) or JSONL (a text field).

Reads in chunks (constant memory), sorts each chunk by length so batches carry little padding, and
writes one JSON line per input, in input order, to a temporary file renamed at the end.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import ServeError
from .runtime import TextClassifier


@dataclass
class PredictSummary:
    output: Path
    rows: int
    seconds: float


def read_texts(path: Path, text_column: str = "text") -> Iterator[tuple[str, str]]:
    """Yield (where, text) for each input row; empty or malformed rows are errors naming their line."""
    if not path.is_file():
        raise ServeError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    with path.open(newline="", encoding="utf-8") as f:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",",
                                    quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            if reader.fieldnames is None:
                raise ServeError(f"{path}: empty file")
            if text_column not in reader.fieldnames:
                raise ServeError(f"{path}: no column {text_column!r} (columns: {', '.join(reader.fieldnames)}); "
                                 f"use --text-column")
            for row in reader:
                yield _checked(f"{path} line {reader.line_num}", row.get(text_column), text_column)
        elif suffix == ".jsonl":
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ServeError(f"{path} line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise ServeError(f"{path} line {n}: expected a JSON object")
                yield _checked(f"{path} line {n}", record.get(text_column), text_column)
        else:  # one text per line
            for n, line in enumerate(f, start=1):
                yield _checked(f"{path} line {n}", line.rstrip("\r\n"), None)


def _checked(where: str, text, column: str | None) -> tuple[str, str]:
    field = f" in field {column!r}" if column else ""
    if not isinstance(text, str):
        raise ServeError(f"{where}: missing text{field}")
    if not text.strip():
        raise ServeError(f"{where}: empty text{field}")
    return where, text


def predict_file(classifier: TextClassifier, input_path: str | Path, output_path: str | Path, *,
                 batch_size: int = 32, text_column: str = "text", chunk_rows: int = 4096) -> PredictSummary:
    import time

    input_path, output_path = Path(input_path), Path(output_path)
    if batch_size <= 0:
        raise ServeError(f"--batch-size must be > 0, got {batch_size}")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.partial-{os.getpid()}")
    t0 = time.perf_counter()
    rows = 0
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for chunk in _chunks(read_texts(input_path, text_column), chunk_rows):
                results = _predict_chunk(classifier, [t for _, t in chunk], batch_size)
                for (where, _), result in zip(chunk, results):
                    best = result[0]
                    out.write(json.dumps({"index": rows, "label": best["label"], "score": best["score"]}) + "\n")
                    rows += 1
        if rows == 0:
            raise ServeError(f"{input_path}: no input rows")
        os.replace(tmp, output_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return PredictSummary(output_path, rows, time.perf_counter() - t0)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _predict_chunk(classifier: TextClassifier, texts: list[str], batch_size: int) -> list:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results: list = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        for i, r in zip(idx, classifier.predict([texts[i] for i in idx])):
            results[i] = r
    return results
