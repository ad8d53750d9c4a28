"""Batch prediction over a file of texts (see serve.inputs for the formats).

Streams the input in chunks (constant memory), tokenizes each chunk in one call, runs it in
length-sorted batches, and writes one JSON line per input in input order. A fresh run writes to a
temporary file renamed at the end; `resume=True` appends to an existing output after the rows it already
holds, and on any failure cuts the file back to its last complete chunk, so no line is ever truncated.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ServeError
from .inputs import Row, read_texts


@dataclass
class PredictSummary:
    output: Path
    rows: int  # rows written by this run
    skipped: int  # rows already in the output (resume)
    seconds: float


def record_for(runner, index: int, result: Any) -> dict[str, Any]:
    """The output line of one input, by task."""
    if runner.task == "text-classification":
        best = result[0]
        return {"index": index, "label": best["label"], "score": best["score"]}
    if runner.task == "token-classification":
        return {"index": index, "entities": result}
    if runner.task == "question-answering":
        from .qa import record

        return record(index, result)
    return {"index": index, "generated_text": result["generated_text"]}


def options_for(runner, text: Any, max_new_tokens: int, num_beams: int = 1) -> dict[str, Any]:
    if runner.task == "token-classification":
        return {"text": text, "aggregation_strategy": "simple", "ignore_labels": ["O"]}
    if runner.task == "text-classification":
        return {"function": None, "top_k": None}
    if runner.task == "question-answering":
        return {}
    if runner.task == "text2text-generation-with-past":
        from .seq2seq import Seq2SeqParams

        return {"params": Seq2SeqParams(max_new_tokens=max_new_tokens, num_beams=num_beams)}
    from .generate import GenerationParams

    return {"params": GenerationParams(max_new_tokens=max_new_tokens)}


def input_columns(bundle, text_column: str | None, pair_column: str | None) -> tuple[str, str | None]:
    """The text and text-pair columns to read: the ones given, else those the bundle was trained on."""
    if text_column is None and bundle.task == "question-answering":
        return "question", pair_column or "context"
    if text_column is None:
        text_column = bundle.text_column
        pair_column = pair_column or bundle.text_pair_column
    return text_column, pair_column


def predict_file(
    runner,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int = 32,
    text_column: str | None = None,
    pair_column: str | None = None,
    chunk_rows: int = 4096,
    resume: bool = False,
    progress: bool | None = None,
    max_new_tokens: int = 20,
    num_beams: int = 1,
) -> PredictSummary:
    input_path, output_path = Path(input_path), Path(output_path)
    text_column, pair_column = input_columns(runner.bundle, text_column, pair_column)
    if batch_size <= 0:
        raise ServeError(f"--batch-size must be > 0, got {batch_size}")
    if pair_column and runner.task not in ("text-classification", "question-answering"):
        raise ServeError(f"--text-pair-column: a {runner.task} bundle takes single texts")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    skipped = completed_rows(output_path) if resume and output_path.exists() else 0
    target = output_path if resume else output_path.with_name(f".{output_path.name}.partial-{os.getpid()}")
    counter: list = []
    rows = read_texts(input_path, text_column, pair_column, counter)
    t0 = time.perf_counter()
    written = 0
    mode = "a" if resume else "w"
    with _Progress(input_path, counter, progress) as bar, target.open(mode, encoding="utf-8") as out:
        good = out.tell()
        try:
            for index, chunk in _chunks(rows, chunk_rows, skip=skipped):
                results = _predict_chunk(runner, [t for _, t in chunk], batch_size, max_new_tokens, num_beams)
                lines = (json.dumps(record_for(runner, index + i, r)) + "\n" for i, r in enumerate(results))
                out.write("".join(lines))
                out.flush()
                good = out.tell()
                written += len(chunk)
                bar.advance(len(chunk))
            if written + skipped == 0:
                raise ServeError(f"{input_path}: no input rows")
        except BaseException:
            if resume:
                out.truncate(good)  # whole lines only: the next --resume continues from here
            else:
                out.close()
                target.unlink(missing_ok=True)
            raise
    if not resume:
        os.replace(target, output_path)
    return PredictSummary(output_path, written, skipped, time.perf_counter() - t0)


def completed_rows(path: Path) -> int:
    """Rows already in an output being resumed; a truncated last line (from a killed run) is cut off."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        tail = b""
        while size - len(tail) > 0 and tail.count(b"\n") < 2:  # read backwards to the last complete line
            start = max(0, size - len(tail) - (1 << 16))
            f.seek(start)
            tail = f.read(size - len(tail) - start) + tail
        end = size - (len(tail) - tail.rfind(b"\n") - 1) if b"\n" in tail else 0
        if end == 0:
            if tail and not tail.startswith(b'{"index"'):
                raise ServeError(
                    f"{path}: cannot resume: not an sft-predict output (move it away or drop --resume)"
                )
            f.truncate(0)
            return 0
        last = tail[: len(tail) - (size - end)].rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            rows = int(json.loads(last)["index"]) + 1
        except (ValueError, KeyError, TypeError):
            raise ServeError(
                f"{path}: cannot resume: its last line is not an sft-predict record "
                f"(move it away or drop --resume)"
            ) from None
        f.truncate(end)
    return rows


def _chunks(rows: Iterator[Row], size: int, *, skip: int = 0) -> Iterator[tuple[int, list[Row]]]:
    """(index of the first row, rows) per chunk, after skipping `skip` rows."""
    chunk: list[Row] = []
    index = 0
    for index, row in enumerate(rows):
        if index < skip:
            continue
        chunk.append(row)
        if len(chunk) == size:
            yield index - size + 1, chunk
            chunk = []
    if chunk:
        yield index - len(chunk) + 1, chunk
    elif index + 1 < skip:
        raise ServeError(f"cannot resume: the output already holds {skip} rows, the input only {index + 1}")


def _predict_chunk(runner, texts: list, batch_size: int, max_new_tokens: int, num_beams: int = 1) -> list:
    encodings = runner.encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
    results: list = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        options = [options_for(runner, texts[i], max_new_tokens, num_beams) for i in idx]
        if runner.task == "text2text-generation-with-past":
            options = [options[0]] * len(idx)  # one params object: one generate() call per batch
        batch = runner.run([encodings[i] for i in idx], options)
        for i, r in zip(idx, batch, strict=False):
            results[i] = r
    return results


class _Progress:
    """A rich progress bar on stderr (bytes of input read, rows/s), only when stderr is a terminal."""

    def __init__(self, path: Path, counter: list, enabled: bool | None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.path, self.counter, self.rows, self.t0 = path, counter, 0, time.perf_counter()

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[rows]} rows, {task.fields[rate]} rows/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.path.name, total=self.path.stat().st_size, rows=0, rate="-")
        return self

    def advance(self, rows: int) -> None:
        self.rows += rows
        if self.enabled:
            rate = self.rows / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(
                self.task,
                completed=self.counter[0].count if self.counter else 0,
                rows=self.rows,
                rate=f"{rate:,.0f}",
            )

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
