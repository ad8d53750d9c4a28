"""`sft-predict` and `sft-serve`: thin typer layers over serve.predict_file() and serve.app.serve()."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import report_errors

predict_app = typer.Typer(add_completion=False, help="Predict labels for a file of texts with an ONNX bundle.")
serve_app = typer.Typer(add_completion=False, help="Serve an ONNX bundle over HTTP with dynamic batching.")


@predict_app.command()
def predict_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by sft-export --onnx."),
    input: Path = typer.Option(..., "--input", "-i", help="Texts: .txt (one per line), .csv/.tsv or .jsonl."),
    output: Path = typer.Option(..., "--output", "-o", help="JSONL file: one {index, label, score} per input."),
    batch_size: int = typer.Option(32, help="Texts per onnxruntime call."),
    text_column: str = typer.Option("text", help="Column/field holding the text in CSV/TSV/JSONL input."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads [default: all cores]."),
) -> None:
    from .predict import predict_file
    from .runtime import TextClassifier

    classifier = TextClassifier.from_bundle(bundle, threads=threads)
    s = predict_file(classifier, input, output, batch_size=batch_size, text_column=text_column)
    typer.echo(f"wrote {s.rows} predictions to {s.output} in {s.seconds:.2f}s ({s.rows / s.seconds:.0f} texts/s)")


@serve_app.command()
def serve_command(
    bundle: Path = typer.Argument(..., help="Bundle directory written by sft-export --onnx."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8080, help="TCP port (0 picks a free one)."),
    max_batch_size: int = typer.Option(32, help="Most texts in one model call."),
    max_wait_ms: float = typer.Option(5.0, help="Longest a request waits for others to batch with."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads [default: all cores]."),
) -> None:
    import asyncio

    from .app import ServeOptions, serve
    from .runtime import TextClassifier

    classifier = TextClassifier.from_bundle(bundle, threads=threads)
    options = ServeOptions(host=host, port=port, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                           threads=threads)
    asyncio.run(serve(classifier, options))


@report_errors
def predict_main() -> None:
    predict_app()


@report_errors
def serve_main() -> None:
    serve_app()
