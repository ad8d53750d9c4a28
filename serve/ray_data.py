"""A bundle in Ray Data: batch prediction over many files on a Ray cluster (`sft-predict --engine ray`).

An optional extra (`pip install sft-toolchain[ray]`); nothing in the core serve path imports this module.

    import ray
    from serve.ray_data import BundlePredictor, read_texts_dataset

    ds = read_texts_dataset("s3://bucket/texts/*.parquet", text_column="body")
    ds = ds.map_batches(BundlePredictor, fn_constructor_kwargs={"bundle": "/shared/bundle"},
                        batch_size=1024, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=8))
    ds.write_parquet("s3://bucket/predictions")

Reading keeps a `row_id` per row ("FILE:LINE" for text files, "FILE:ROW" for Parquet, rows counted
from 0) so the output joins back to the input; Ray does not keep row order across actors. Each actor
holds one onnxruntime session and runs each block in length-sorted micro-batches, exactly as
sft-predict does, and writes the same fields (label and score, entities, or generated_text).

A malformed row is found while reading and carried in an `error` column; the actor then either stops
the job with that row's file and line (on_error="fail", sft-predict's behaviour) or writes the row out
with its error and no prediction (on_error="column").
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from ray.data.datasource import FileBasedDatasource

from .bundle import GENERATION_TASK, read_manifest, sha256_file
from .errors import ServeError
from .inputs import _checked, _row
from .predict import _predict_chunk, input_columns, record_for
from .runtime import load_model

ROW_ID, TEXT, PAIR, ERROR = "row_id", "text", "pair", "error"
ON_ERROR = ("fail", "column")
FORMATS = ("parquet", "jsonl")
MARKER = "_SFT_PREDICT"  # like Spark's _SUCCESS: readers skip names starting with "_", globs *.json miss it
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4", ".br", ".snappy")

_ENTITY = pa.struct(
    [
        ("entity_group", pa.string()),
        ("score", pa.float64()),
        ("word", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
    ]
)
_PREDICTION_FIELDS = {
    "text-classification": [("label", pa.string()), ("score", pa.float64())],
    "token-classification": [("entities", pa.list_(_ENTITY))],
    GENERATION_TASK: [("generated_text", pa.string())],
}


def prediction_schema(task: str, *, errors: bool = False, keep: list[pa.Field] | None = None) -> pa.Schema:
    """The output columns: row_id, any kept input columns, the task's fields, and `error` if asked."""
    fields = [pa.field(ROW_ID, pa.string())]
    fields += keep or []
    fields += [pa.field(name, kind) for name, kind in _PREDICTION_FIELDS[task]]
    if errors:
        fields.append(pa.field(ERROR, pa.string()))
    return pa.schema(fields)


# Reading ----------------------------------------------------------------------------------------------


class TextsDatasource(FileBasedDatasource):
    """Texts from .txt (one per line), .csv/.tsv, .jsonl or .parquet files, validated as sft-predict does.

    Each row is {row_id, text, pair, error, *keep_columns}: a row that sft-predict would reject keeps
    its message in `error` (text null) instead of failing the read, so the job decides what to do.
    A file that cannot be read at all (not UTF-8, no such column) becomes one error row for that file.
    """

    def __init__(
        self,
        paths: str | list[str],
        *,
        text_column: str = "text",
        pair_column: str | None = None,
        keep_columns: tuple[str, ...] = (),
        rows_per_block: int = 1024,
        **kwargs,
    ):
        super().__init__(paths, **kwargs)
        self.text_column, self.pair_column = text_column, pair_column
        self.keep_columns, self.rows_per_block = tuple(keep_columns), rows_per_block

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        if _format(path) == ".parquet":  # the footer comes first: Parquet needs a seekable file
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows: list[dict[str, Any]] = []
        try:
            for row in self._rows(f, path):
                rows.append(row)
                if len(rows) == self.rows_per_block:
                    yield self._table(rows)
                    rows = []
        except ServeError as e:
            rows.append(self._row(f"{path}:-", None, str(e), {}))
        except UnicodeDecodeError as e:
            rows.append(self._row(f"{path}:-", None, f"{path}: not UTF-8 text ({e.reason})", {}))
        if rows:
            yield self._table(rows)

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        columns = {
            name: pa.array([r[name] for r in rows], pa.string()) for name in (ROW_ID, TEXT, PAIR, ERROR)
        }
        for name in self.keep_columns:  # typed as the file has them (Parquet) or as pyarrow infers them
            columns[name] = pa.array([r[name] for r in rows])
        return pa.table(columns)

    def _row(self, row_id: str, text: Any, error: str | None, record: dict) -> dict[str, Any]:
        pair = None
        if isinstance(text, tuple):
            text, pair = text
        row = {ROW_ID: row_id, TEXT: text, PAIR: pair, ERROR: error}
        for name in self.keep_columns:
            row[name] = record.get(name)
        return row

    def _parsed(self, row_id: str, where: str, record: Any) -> dict[str, Any]:
        """One row from a parsed record (a dict), or its error as sft-predict words it."""
        if not isinstance(record, dict):
            return self._row(row_id, None, f"{where}: expected a JSON object", {})
        try:
            return self._row(row_id, _row(where, record, self.text_column, self.pair_column)[1], None, record)
        except ServeError as e:
            return self._row(row_id, None, str(e), record)

    def _rows(self, f: pa.NativeFile, path: str) -> Iterator[dict[str, Any]]:
        suffix = _format(path)
        if suffix == ".parquet":
            yield from self._parquet_rows(f, path)
            return
        text = io.TextIOWrapper(io.BufferedReader(f, 1 << 16), encoding="utf-8", newline="")
        if suffix in (".csv", ".tsv"):
            yield from self._table_rows(text, path, suffix)
        elif suffix in (".jsonl", ".json"):
            yield from self._jsonl_rows(text, path)
        else:
            for n, line in enumerate(text, start=1):
                where = f"{path} line {n}"
                try:
                    yield self._row(f"{path}:{n}", _checked(where, line.rstrip("\r\n"), None)[1], None, {})
                except ServeError as e:
                    yield self._row(f"{path}:{n}", None, str(e), {})

    def _jsonl_rows(self, text, path: str) -> Iterator[dict[str, Any]]:
        for n, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                message = f"{path} line {n}: malformed JSON ({e.msg} at column {e.colno})"
                yield self._row(f"{path}:{n}", None, message, {})
                continue
            yield self._parsed(f"{path}:{n}", f"{path} line {n}", record)

    def _table_rows(self, text, path: str, suffix: str) -> Iterator[dict[str, Any]]:
        reader = csv.DictReader(
            text,
            delimiter="\t" if suffix == ".tsv" else ",",
            quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
        )
        if reader.fieldnames is None:
            raise ServeError(f"{path}: empty file")
        self._check_columns(path, reader.fieldnames)
        try:
            for record in reader:
                n = reader.line_num
                yield self._parsed(f"{path}:{n}", f"{path} line {n}", record)
        except csv.Error as e:  # the reader cannot go on after this: the rest of the file is one error
            n = reader.line_num
            yield self._row(f"{path}:{n}", None, f"{path} line {n}: malformed {suffix[1:].upper()} ({e})", {})

    def _parquet_rows(self, f: pa.NativeFile, path: str) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(f)
        self._check_columns(path, parquet.schema_arrow.names)
        columns = list(
            dict.fromkeys(c for c in (self.text_column, self.pair_column, *self.keep_columns) if c)
        )
        n = 0
        for batch in parquet.iter_batches(batch_size=self.rows_per_block, columns=columns):
            for record in batch.to_pylist():
                yield self._parsed(f"{path}:{n}", f"{path} row {n}", record)
                n += 1

    def _check_columns(self, path: str, names: list[str]) -> None:
        for column in (self.text_column, self.pair_column, *self.keep_columns):
            if column and column not in names:
                raise ServeError(
                    f"{path}: no column {column!r} (columns: {', '.join(names)}); "
                    f"use --text-column / --text-pair-column / --keep-column"
                )


def _format(path: str) -> str:
    """The format suffix of a file name, under a compression suffix (Ray decompresses those)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if len(suffixes) > 1 and suffixes[-1] in _COMPRESSED:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def expand_paths(inputs: str | list[str]) -> list[str]:
    """Files, folders and globs (local or any filesystem pyarrow knows: s3://, gs://, ...) to read."""
    paths = []
    for path in [inputs] if isinstance(inputs, str) else inputs:
        path = str(path)
        if not any(c in path for c in "*?["):
            paths.append(path)
            continue
        matches = _glob(path)
        if not matches:
            raise ServeError(f"--input {path}: no file matches")
        paths.extend(matches)
    return paths


def _glob(pattern: str) -> list[str]:
    import pyarrow.fs as pafs

    parts = pattern.split("/")
    first = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
    base = "/".join(parts[:first]) or "."
    fs, root = pafs.FileSystem.from_uri(base) if "://" in base else (pafs.LocalFileSystem(), base)
    scheme = base[: base.index("://") + 3] if "://" in base else ""
    rest = "/".join(parts[first:])
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive="**" in rest or "/" in rest))
    except FileNotFoundError:
        return []
    found = [
        f"{scheme}{info.path}" if scheme else info.path for info in infos if info.type == pafs.FileType.File
    ]
    matched = sorted(p for p in found if fnmatch.fnmatch(p, f"{base.rstrip('/')}/{rest}"))
    return matched if scheme else [os.path.normpath(p) for p in matched]


def read_texts_dataset(
    paths: str | list[str],
    *,
    text_column: str = "text",
    pair_column: str | None = None,
    keep_columns: tuple[str, ...] = (),
    rows_per_block: int = 1024,
    override_num_blocks: int | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of {row_id, text, pair, error, *keep_columns} from files, folders or globs."""
    try:
        source = TextsDatasource(
            expand_paths(paths),
            text_column=text_column,
            pair_column=pair_column,
            keep_columns=keep_columns,
            rows_per_block=rows_per_block,
            file_extensions=None,
        )
    except (FileNotFoundError, ValueError) as e:
        raise ServeError(f"--input {paths}: {str(e).splitlines()[0]}") from None
    # Reading (and writing) reserve no CPU: the actors hold the cores, and a read task waiting for a core
    # that the actors will never free would stall the job (2 actors on a 2-core machine).
    return ray.data.read_datasource(source, override_num_blocks=override_num_blocks, num_cpus=0)


# Predicting -------------------------------------------------------------------------------------------


class BundlePredictor:
    """A Ray Data callable class (map_batches with batch_format="pyarrow"): one runner per actor.

    `bundle` is a path every node can read, or a ShippedBundle (the files through the object store).
    """

    def __init__(
        self,
        bundle,
        *,
        batch_size: int = 32,
        max_new_tokens: int = 20,
        threads: int | None = 1,
        device: str = "cpu",
        on_error: str = "fail",
        keep_columns: tuple[str, ...] = (),
        verify: bool = True,
    ):
        if on_error not in ON_ERROR:
            raise ServeError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        path = bundle.materialize() if isinstance(bundle, ShippedBundle) else bundle
        self.runner = load_model(path, verify=verify, threads=threads, device=device, spinning=False)
        self.batch_size, self.max_new_tokens, self.on_error = batch_size, max_new_tokens, on_error
        self.keep_columns = tuple(keep_columns)

    def __call__(self, batch: pa.Table) -> pa.Table:
        errors = batch.column(ERROR).to_pylist()
        if self.on_error == "fail":
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise ServeError(first)
        good = [i for i, e in enumerate(errors) if e is None]
        texts, pairs = batch.column(TEXT).to_pylist(), batch.column(PAIR).to_pylist()
        inputs = [texts[i] if pairs[i] is None else (texts[i], pairs[i]) for i in good]
        results = _predict_chunk(self.runner, inputs, self.batch_size, self.max_new_tokens) if inputs else []
        keep = [batch.schema.field(name) for name in self.keep_columns]
        schema = prediction_schema(self.runner.task, errors=self.on_error == "column", keep=keep)
        columns: dict[str, Any] = {name: batch.column(name) for name in (ROW_ID, *self.keep_columns)}
        names = [n for n in schema.names if n not in columns and n != ERROR]
        values: dict[str, list] = {name: [None] * len(errors) for name in names}
        for i, result in zip(good, results, strict=True):
            record = record_for(self.runner, i, result)
            for name in names:
                values[name][i] = record[name]
        columns.update({name: pa.array(values[name], schema.field(name).type) for name in names})
        if self.on_error == "column":
            columns[ERROR] = batch.column(ERROR)
        return pa.table(columns, schema=schema)


@dataclass
class ShippedBundle:
    """A bundle's files in Ray's object store, for clusters whose nodes cannot read the driver's disk."""

    key: str  # sha256 of manifest.json, which holds every other file's sha256
    files: dict[str, ray.ObjectRef]

    @classmethod
    def put(cls, path: str | Path) -> ShippedBundle:
        bundle = read_manifest(path)
        names = ["manifest.json", *bundle.manifest["sha256"], "model.onnx", "tokenizer.json"]
        files = {name: ray.put((bundle.path / name).read_bytes()) for name in dict.fromkeys(names)}
        return cls(sha256_file(bundle.path / "manifest.json")[:16], files)

    def materialize(self) -> Path:
        """The files in a local folder, one per node and bundle (the runner then checks their sha256)."""
        out = Path(tempfile.gettempdir()) / f"sft-bundle-{self.key}"
        if (out / "manifest.json").is_file():
            return out
        work = out.with_name(f"{out.name}.partial-{os.getpid()}")
        work.mkdir(parents=True, exist_ok=True)
        for name, ref in self.files.items():
            (work / name).write_bytes(ray.get(ref))
        try:
            os.replace(work, out)
        except OSError:  # another actor on this node got there first
            shutil.rmtree(work, ignore_errors=True)
        return out


# The whole job ----------------------------------------------------------------------------------------


@dataclass
class RaySummary:
    output: str
    rows: int  # rows written (with errors, when on_error="column")
    errors: int
    seconds: float  # reading, predicting and writing, without starting Ray
    startup_seconds: float
    actors: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


def predict_with_ray(
    bundle: str | Path,
    input: str | list[str],
    output: str | Path,
    *,
    address: str | None = None,
    actors: int = 1,
    threads: int = 1,
    batch_size: int = 32,
    chunk_rows: int = 1024,
    text_column: str | None = None,
    pair_column: str | None = None,
    keep_columns: tuple[str, ...] = (),
    output_format: str = "parquet",
    on_error: str = "fail",
    max_new_tokens: int = 20,
    device: str = "cpu",
    ship_bundle: bool | None = None,
    num_cpus: int | None = None,
    progress: bool = False,
    predictor_class: type = BundlePredictor,
) -> RaySummary:
    """Read, predict and write with Ray Data; the output folder appears only when the job succeeded.

    Without `address` a local Ray instance is started (and shut down at the end); with one, the job joins
    that cluster and ships the bundle through the object store unless `ship_bundle=False`.
    """
    _check_options(actors=actors, threads=threads, batch_size=batch_size, chunk_rows=chunk_rows)
    if output_format not in FORMATS:
        raise ServeError(f"--output-format must be one of {', '.join(FORMATS)}, got {output_format!r}")
    if on_error not in ON_ERROR:
        raise ServeError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    manifest = read_manifest(bundle)
    task = manifest.task
    text_column, pair_column = input_columns(manifest, text_column, pair_column)
    if pair_column and task != "text-classification":
        raise ServeError(f"--text-pair-column: a {task} bundle takes single texts")
    local_output = "://" not in str(output)
    if local_output:
        _check_output_dir(Path(output))
    t0 = time.perf_counter()
    started = _start_ray(address, num_cpus, progress)
    try:
        startup = time.perf_counter() - t0
        _check_cpus(actors, threads)
        t1 = time.perf_counter()
        ds = read_texts_dataset(
            input,
            text_column=text_column,
            pair_column=pair_column,
            keep_columns=keep_columns,
            rows_per_block=chunk_rows,
        )
        shipped = address is not None if ship_bundle is None else ship_bundle
        predictions = ds.map_batches(
            predictor_class,
            fn_constructor_kwargs={
                "bundle": ShippedBundle.put(bundle) if shipped else str(Path(bundle).resolve()),
                "batch_size": batch_size,
                "max_new_tokens": max_new_tokens,
                "threads": threads,
                "device": device,
                "on_error": on_error,
                "keep_columns": tuple(keep_columns),
            },
            batch_size=chunk_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads,
            num_gpus=1 if device == "cuda" else 0,
        )
        target = _work_dir(Path(output)) if local_output else str(output)
        try:
            _write(predictions, str(target), output_format)
            rows, errors = _count(str(target), output_format, on_error == "column")
            seconds = time.perf_counter() - t1
            summary = RaySummary(str(output), rows, errors, seconds, startup, actors)
            if local_output:
                _write_marker(Path(target), summary, bundle=bundle, input=input)
                _replace_dir(Path(target), Path(output))
        except BaseException as e:
            if local_output:
                shutil.rmtree(target, ignore_errors=True)
            _raise_serve_error(e)
            raise
        return summary
    finally:
        if started:
            ray.shutdown()


def _check_options(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ServeError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _start_ray(address: str | None, num_cpus: int | None, progress: bool) -> bool:
    """Connect to `address` or start a local instance; True when this call started Ray."""
    import logging

    ray.data.DataContext.get_current().enable_progress_bars = progress
    for handler in logging.getLogger("ray.data").handlers:  # the log file under /tmp/ray keeps everything
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.INFO if progress else logging.CRITICAL)
    if ray.is_initialized():
        return False
    try:
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except ConnectionError as e:
        hint = " (a cluster with token authentication also needs RAY_AUTH_MODE=token and its token)"
        raise ServeError(f"--address {address}: {e}{hint}") from None
    return True


def _write(ds: ray.data.Dataset, path: str, output_format: str) -> None:
    if output_format == "parquet":
        ds.write_parquet(path, ray_remote_args={"num_cpus": 0})
    else:
        # pandas writes the lines; 15 digits keeps scores as exact as sft-predict's JSON for float32 models
        ds.write_json(path, ray_remote_args={"num_cpus": 0}, double_precision=15, force_ascii=False)


def _check_cpus(actors: int, threads: int) -> None:
    """Actors that cannot all get their CPUs would leave the job waiting forever: say so instead."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if actors * threads > cpus:
        raise ServeError(
            f"--actors {actors} x --threads {threads} needs {actors * threads} CPUs; "
            f"the Ray cluster has {cpus:g}"
        )


def _count(path: str, output_format: str, errors: bool) -> tuple[int, int]:
    """Rows and error rows in the written output (from Parquet footers, or by reading JSONL back)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    dataset = pds.dataset(path, format="parquet" if output_format == "parquet" else "json")
    rows = dataset.count_rows()
    bad = dataset.count_rows(filter=pc.field(ERROR).is_valid()) if errors else 0
    return rows, bad


def _raise_serve_error(e: BaseException) -> None:
    """A ServeError raised in an actor reaches the driver only as text inside Ray's UserCodeException
    (the worker-side exception chain is not pickled): find it there and raise it as one line."""
    if isinstance(e, ServeError):
        return
    found = re.search(r"^serve\.errors\.ServeError: (.+)$", str(e), re.MULTILINE)
    if found:
        raise ServeError(found.group(1)) from None


def _check_output_dir(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ServeError(f"--output {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not (output / MARKER).is_file():
        raise ServeError(f"--output {output}: directory is not empty and was not written by sft-predict")


def _work_dir(output: Path) -> Path:
    work = output.resolve().parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    return work


def _write_marker(work: Path, summary: RaySummary, **about) -> None:
    record = {**{k: str(v) for k, v in about.items()}, "rows": summary.rows, "errors": summary.errors}
    (work / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def _replace_dir(work: Path, output: Path) -> None:
    """Move the finished output into place; an older sft-predict output is removed only afterwards."""
    old = output.resolve().parent / f".{output.name}.old-{os.getpid()}"
    if output.exists():
        os.replace(output, old)
    os.replace(work, output)
    shutil.rmtree(old, ignore_errors=True)


def predict_command(
    bundle: Path,
    input: str,
    output: str,
    *,
    resume: bool = False,
    progress: bool = True,
    threads: int | None = None,
    **options,
) -> None:
    """`sft-predict --engine ray`: run the job and print one summary line (serve.cli delegates here)."""
    import sys

    if resume:
        raise ServeError("--resume: only with --engine local (a Ray job writes a whole new output folder)")
    s = predict_with_ray(
        bundle, input, output, threads=threads or 1, progress=progress and sys.stderr.isatty(), **options
    )
    bad = f", {s.errors} with errors" if s.errors else ""
    rate = f"{s.rows_per_second:.0f}" if s.rows_per_second >= 10 else f"{s.rows_per_second:.2f}"
    print(
        f"wrote {s.rows} predictions{bad} to {s.output} in {s.seconds:.2f}s "
        f"({rate} rows/s on {s.actors} actor(s); Ray started in {s.startup_seconds:.1f}s)"
    )
