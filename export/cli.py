"""`sft-export`: a thin typer layer over export.export_onnx()."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sft.errors import InputError, report_errors

app = typer.Typer(add_completion=False, help="Convert a fine-tuned checkpoint into a validated ONNX serving bundle.")


@app.command()
def export_command(
    checkpoint: Path = typer.Argument(..., help="sft-train output (a Hugging Face checkpoint directory)."),
    onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX through Optimum (the only format for now)."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle directory to write."),
    atol: float = typer.Option(1e-4, help="Fail when max |ONNX - PyTorch| logit difference exceeds this."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset [default: Optimum's choice for the model]."),
    max_length: Optional[int] = typer.Option(None, help="Truncation length in the bundle [default: the training one]."),
) -> None:
    from .onnx import export_onnx

    if not onnx:
        raise InputError("choose an export format: --onnx")
    report = export_onnx(checkpoint, output, atol=atol, opset=opset, max_length=max_length)
    typer.echo(f"wrote {report.bundle_dir} (opset {report.manifest['opset']}); max |ONNX - PyTorch| = "
               f"{report.max_abs_diff:.2e} on {report.num_samples} texts (atol {atol:g})")


@report_errors
def main() -> None:
    app()
