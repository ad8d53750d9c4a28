"""`sft-predict` and `sft-serve`: thin typer layers over serve.predict_file() and serve.app.serve().

Every option can also come from the environment variable shown in --help (SFT_SERVE_*, SFT_PREDICT_*).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import typer

from .errors import ServeError, report_errors

# Plain click help and errors (no rich): --help answers without importing rich's renderer.
predict_app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    help="Predict with an ONNX bundle over a file of texts.",
)
serve_app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    help="Serve an ONNX bundle over HTTP with dynamic batching (text-embeddings-inference's API).",
)


@predict_app.command()
def predict_command(
    bundle: Path = typer.Argument(
        ..., help="Bundle directory written by sft-export --onnx.", envvar="SFT_PREDICT_BUNDLE"
    ),
    input: str = typer.Option(
        ...,
        "--input",
        "-i",
        envvar="SFT_PREDICT_INPUT",
        help="Texts: .txt (one per line), .csv/.tsv or .jsonl; any size (streamed). "
        "--engine ray: also .parquet, a folder, a glob or a URI (s3://...).",
    ),
    output: str = typer.Option(
        ...,
        "--output",
        "-o",
        envvar="SFT_PREDICT_OUTPUT",
        help="JSONL, one line per input in input order: {index, label, score} "
        "(classification), {index, entities} or {index, generated_text}. "
        "--engine ray: a folder of shards, each row with its row_id (FILE:LINE).",
    ),
    batch_size: int = typer.Option(32, envvar="SFT_PREDICT_BATCH_SIZE", help="Texts per onnxruntime call."),
    text_column: str | None = typer.Option(
        None,
        envvar="SFT_PREDICT_TEXT_COLUMN",
        help="Column/field holding the text in CSV/TSV/JSONL input "
        "[default: the one the model was trained on, else text].",
    ),
    text_pair_column: str | None = typer.Option(
        None,
        envvar="SFT_PREDICT_TEXT_PAIR_COLUMN",
        help="Column/field holding the second text of a pair [default: the training one, if any].",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        envvar="SFT_PREDICT_RESUME",
        help="Keep the rows OUTPUT already holds and append the rest.",
    ),
    progress: bool = typer.Option(
        True,
        "--progress/--no-progress",
        envvar="SFT_PREDICT_PROGRESS",
        help="Progress bar on stderr (only when stderr is a terminal).",
    ),
    max_new_tokens: int = typer.Option(
        20,
        envvar="SFT_PREDICT_MAX_NEW_TOKENS",
        help="Tokens to generate per prompt (text-generation bundles).",
    ),
    num_beams: int = typer.Option(
        1,
        envvar="SFT_PREDICT_NUM_BEAMS",
        help="Beam search width (text2text-generation bundles; 1: greedy).",
    ),
    threads: int | None = typer.Option(
        None,
        envvar="SFT_PREDICT_THREADS",
        help="onnxruntime intra-op threads [default: usable cores; --engine ray: 1 per actor].",
    ),
    device: str = typer.Option(
        "auto", envvar="SFT_PREDICT_DEVICE", help="auto (CUDA if available), cpu, cuda."
    ),
    engine: str = typer.Option(
        "local", envvar="SFT_PREDICT_ENGINE", help="local (this process) or ray (Ray Data; pip extra [ray])."
    ),
    address: str | None = typer.Option(
        None,
        envvar="SFT_PREDICT_ADDRESS",
        help="--engine ray: the cluster to join (host:port, ray://host:10001) [default: a local one].",
    ),
    actors: int = typer.Option(
        1, envvar="SFT_PREDICT_ACTORS", help="--engine ray: actors, each with one onnxruntime session."
    ),
    output_format: str = typer.Option(
        "parquet", envvar="SFT_PREDICT_OUTPUT_FORMAT", help="--engine ray: parquet or jsonl shards."
    ),
    on_error: str = typer.Option(
        "fail",
        envvar="SFT_PREDICT_ON_ERROR",
        help="--engine ray: fail (stop at a bad row, naming its file and line) or column (an error column).",
    ),
    keep_column: list[str] = typer.Option(
        [], "--keep-column", help="--engine ray: an input column to copy to the output (repeatable)."
    ),
) -> None:
    if engine == "ray":
        try:
            from .ray_data import predict_command as predict_on_ray
        except ImportError as e:
            raise ServeError(f"--engine ray needs Ray Data: pip install 'sft-toolchain[ray]' ({e})") from None
        _positive(batch_size=batch_size, max_new_tokens=max_new_tokens, threads=threads, actors=actors)
        return predict_on_ray(
            bundle,
            input,
            output,
            resume=resume,
            progress=progress,
            threads=threads,
            address=address,
            actors=actors,
            batch_size=batch_size,
            text_column=text_column,
            pair_column=text_pair_column,
            keep_columns=tuple(keep_column),
            output_format=output_format,
            on_error=on_error,
            max_new_tokens=max_new_tokens,
            device=device,
        )
    if engine != "local":
        raise ServeError(f"--engine must be local or ray, got {engine!r}")
    from .images import ImageClassifier, is_image_bundle, predict_images
    from .predict import predict_file
    from .runtime import load_model

    _positive(batch_size=batch_size, max_new_tokens=max_new_tokens, threads=threads, num_beams=num_beams)
    if is_image_bundle(bundle):
        start = time.perf_counter()
        classifier = ImageClassifier(bundle, threads=threads, device=device)
        rows = predict_images(classifier, input, output, batch_size=batch_size)
        seconds = time.perf_counter() - start
        typer.echo(
            f"wrote {rows} predictions to {output} in {seconds:.2f}s "
            f"({rows / max(seconds, 1e-9):.0f} images/s)"
        )
        return
    runner = load_model(bundle, threads=threads, device=device)
    s = predict_file(
        runner,
        input,
        output,
        batch_size=batch_size,
        text_column=text_column,
        pair_column=text_pair_column,
        resume=resume,
        progress=None if progress else False,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
    )
    kept = f" (kept {s.skipped} rows already there)" if s.skipped else ""
    typer.echo(
        f"wrote {s.rows} predictions to {s.output} in {s.seconds:.2f}s "
        f"({s.rows / max(s.seconds, 1e-9):.0f} texts/s){kept}"
    )


def serve_command(bundle: Path, **values) -> None:
    """Serve an ONNX bundle over HTTP with dynamic batching (text-embeddings-inference's API and the
    Open Inference Protocol v2)."""
    from .images import ImageClassifier, is_image_bundle
    from .options import ServeOptions
    from .runtime import load_model
    from .server import serve

    options = ServeOptions(**values)
    _check_serve_options(options)
    kwargs = {"max_new_tokens_cap": options.max_new_tokens} if _is_generation(bundle) else {}
    if is_image_bundle(bundle):
        runner = ImageClassifier(
            bundle, threads=options.threads, device=options.device, verify=options.verify
        )
        return serve(runner, options)
    runner = load_model(
        bundle,
        verify=options.verify,
        threads=options.threads,
        device=options.device,
        spinning=False,
        **kwargs,
    )
    serve(runner, options)


def _serve_signature() -> inspect.Signature:
    """serve_command's typer parameters, one per serve.options field (flags, env variable, default, help)."""
    from typing import get_type_hints

    from .options import ServeOptions, option_specs

    hints = get_type_hints(ServeOptions)
    bundle = inspect.Parameter(
        "bundle",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Path,
        default=typer.Argument(
            ..., help="Bundle directory written by sft-export --onnx.", envvar="SFT_SERVE_BUNDLE"
        ),
    )
    options = [
        inspect.Parameter(
            spec.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=hints[spec.name],
            default=typer.Option(
                spec.default,
                *spec.flags,
                envvar=spec.envvar,
                help=spec.help,
                show_default=spec.show_default and spec.default is not None,
            ),
        )
        for spec in option_specs()
    ]
    return inspect.Signature([bundle, *options])


serve_command.__signature__ = _serve_signature()
serve_app.command()(serve_command)


def _check_serve_options(o) -> None:
    if not 0 <= o.port <= 65535:
        raise ServeError(f"--port must be between 0 and 65535, got {o.port}")
    _positive(
        max_batch_tokens=o.max_batch_tokens,
        max_batch_requests=o.max_batch_requests,
        max_concurrent_requests=o.max_concurrent_requests,
        max_client_batch_size=o.max_client_batch_size,
        max_body_bytes=o.max_body_bytes,
        max_new_tokens=o.max_new_tokens,
        threads=o.threads,
        header_timeout=o.header_timeout,
        body_timeout=o.body_timeout,
        keep_alive_timeout=o.keep_alive_timeout,
    )
    if o.max_queue_delay_ms < 0:
        raise ServeError(f"--max-queue-delay-ms must be >= 0, got {o.max_queue_delay_ms}")
    if o.drain_timeout < 0:
        raise ServeError(f"--drain-timeout must be >= 0, got {o.drain_timeout}")
    if bool(o.ssl_certfile) != bool(o.ssl_keyfile):
        raise ServeError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
    for name in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(o, name)
        if path is not None and not path.is_file():
            raise ServeError(f"--{name.replace('_', '-')} {path}: file not found")


def _is_generation(bundle: Path) -> bool:
    from .bundle import GENERATION_TASK, SEQ2SEQ_TASK, read_manifest

    return read_manifest(bundle).task in (GENERATION_TASK, SEQ2SEQ_TASK)


def _positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ServeError(f"--{name.replace('_', '-')} must be > 0, got {value}")


@report_errors
def predict_main() -> None:
    predict_app()


@report_errors
def serve_main() -> None:
    serve_app()
