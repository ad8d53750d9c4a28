"""`sft-predict` and `sft-serve`: thin typer layers over serve.predict_file() and serve.app.serve().

Every option can also come from the environment variable shown in --help (SFT_SERVE_*, SFT_PREDICT_*).
"""

from __future__ import annotations

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
    input: Path = typer.Option(
        ...,
        "--input",
        "-i",
        envvar="SFT_PREDICT_INPUT",
        help="Texts: .txt (one per line), .csv/.tsv or .jsonl; any size (streamed).",
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        envvar="SFT_PREDICT_OUTPUT",
        help="JSONL, one line per input in input order: {index, label, score} "
        "(classification), {index, entities} or {index, generated_text}.",
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
    threads: int | None = typer.Option(
        None, envvar="SFT_PREDICT_THREADS", help="onnxruntime intra-op threads [default: usable cores]."
    ),
    device: str = typer.Option(
        "auto", envvar="SFT_PREDICT_DEVICE", help="auto (CUDA if available), cpu, cuda."
    ),
) -> None:
    from .predict import predict_file
    from .runtime import load_model

    _positive(batch_size=batch_size, max_new_tokens=max_new_tokens, threads=threads)
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
    )
    kept = f" (kept {s.skipped} rows already there)" if s.skipped else ""
    typer.echo(
        f"wrote {s.rows} predictions to {s.output} in {s.seconds:.2f}s "
        f"({s.rows / max(s.seconds, 1e-9):.0f} texts/s){kept}"
    )


@serve_app.command()
def serve_command(
    bundle: Path = typer.Argument(
        ..., help="Bundle directory written by sft-export --onnx.", envvar="SFT_SERVE_BUNDLE"
    ),
    host: str = typer.Option(
        "127.0.0.1", envvar="SFT_SERVE_HOST", help="Address to bind (loopback unless told otherwise)."
    ),
    port: int = typer.Option(8080, envvar="SFT_SERVE_PORT", help="TCP port (0 picks a free one)."),
    max_batch_tokens: int | None = typer.Option(
        None,
        envvar="SFT_SERVE_MAX_BATCH_TOKENS",
        help="Most tokens (before padding) in one batch [default: 4096 on CPU, 16384 on CUDA].",
    ),
    max_batch_requests: int = typer.Option(
        64,
        "--max-batch-requests",
        "--max-batch-size",
        envvar="SFT_SERVE_MAX_BATCH_REQUESTS",
        help="Most inputs in one batch (--max-batch-size is an alias).",
    ),
    max_queue_delay_ms: float = typer.Option(
        2.0,
        "--max-queue-delay-ms",
        "--max-wait-ms",
        envvar="SFT_SERVE_MAX_QUEUE_DELAY_MS",
        help="Longest an input waits for others to batch with (--max-wait-ms is an alias).",
    ),
    max_concurrent_requests: int = typer.Option(
        512, envvar="SFT_SERVE_MAX_CONCURRENT_REQUESTS", help="Requests in flight before new ones get 429."
    ),
    max_client_batch_size: int = typer.Option(
        256, envvar="SFT_SERVE_MAX_CLIENT_BATCH_SIZE", help="Most inputs in one request (more: 413)."
    ),
    max_body_bytes: int = typer.Option(
        2 << 20, envvar="SFT_SERVE_MAX_BODY_BYTES", help="Largest request body (more: 413)."
    ),
    auto_truncate: bool = typer.Option(
        True,
        "--auto-truncate/--no-auto-truncate",
        envvar="SFT_SERVE_AUTO_TRUNCATE",
        help="Truncate inputs to the bundle's max_length; off: longer ones "
        'get 413 (a request\'s "truncate" field overrides).',
    ),
    max_new_tokens: int = typer.Option(
        256, envvar="SFT_SERVE_MAX_NEW_TOKENS", help="Cap on max_new_tokens of a generation request."
    ),
    api_key: str | None = typer.Option(
        None,
        envvar="SFT_SERVE_API_KEY",
        show_default=False,
        help="Require 'Authorization: Bearer KEY' (not on /health). "
        "Prefer the environment variable: arguments show in ps.",
    ),
    threads: int | None = typer.Option(
        None, envvar="SFT_SERVE_THREADS", help="onnxruntime intra-op threads [default: usable cores]."
    ),
    device: str = typer.Option(
        "auto", envvar="SFT_SERVE_DEVICE", help="auto (CUDA if available), cpu, cuda."
    ),
    drain_timeout: float = typer.Option(
        30.0, envvar="SFT_SERVE_DRAIN_TIMEOUT", help="Seconds to finish in-flight requests after SIGTERM."
    ),
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        envvar="SFT_SERVE_VERIFY",
        help="Check every bundle file's sha256 against the manifest at start.",
    ),
) -> None:
    import asyncio

    from .app import ServeOptions, serve
    from .runtime import load_model

    if not 0 <= port <= 65535:
        raise ServeError(f"--port must be between 0 and 65535, got {port}")
    _positive(
        max_batch_tokens=max_batch_tokens,
        max_batch_requests=max_batch_requests,
        max_concurrent_requests=max_concurrent_requests,
        max_client_batch_size=max_client_batch_size,
        max_body_bytes=max_body_bytes,
        max_new_tokens=max_new_tokens,
        threads=threads,
    )
    if max_queue_delay_ms < 0:
        raise ServeError(f"--max-queue-delay-ms must be >= 0, got {max_queue_delay_ms}")
    kwargs = {"max_new_tokens_cap": max_new_tokens} if _is_generation(bundle) else {}
    runner = load_model(bundle, verify=verify, threads=threads, device=device, spinning=False, **kwargs)
    if max_batch_tokens is None:
        from .batcher import CPU_MAX_BATCH_TOKENS, CUDA_MAX_BATCH_TOKENS

        max_batch_tokens = CUDA_MAX_BATCH_TOKENS if runner.model.on_cuda else CPU_MAX_BATCH_TOKENS
    options = ServeOptions(
        host=host,
        port=port,
        max_batch_tokens=max_batch_tokens,
        max_batch_requests=max_batch_requests,
        max_queue_delay_ms=max_queue_delay_ms,
        max_concurrent_requests=max_concurrent_requests,
        max_client_batch_size=max_client_batch_size,
        max_body_bytes=max_body_bytes,
        auto_truncate=auto_truncate,
        api_key=api_key or None,
        max_new_tokens=max_new_tokens,
        drain_timeout_s=drain_timeout,
    )
    asyncio.run(serve(runner, options))


def _is_generation(bundle: Path) -> bool:
    from .bundle import GENERATION_TASK, read_manifest

    return read_manifest(bundle).task == GENERATION_TASK


def _positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ServeError(f"--{name.replace('_', '-')} must be > 0, got {value}")


@report_errors
def predict_main() -> None:
    predict_app()


@report_errors
def serve_main() -> None:
    serve_app()
