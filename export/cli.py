"""`sft-export`: a thin typer layer over export.export_onnx(), plus the report tables it prints."""

from __future__ import annotations

from pathlib import Path

import typer

from sft.errors import InputError, report_errors

# Plain click help and errors (no rich); nothing heavy is imported before the command runs.
app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    help="Convert a fine-tuned checkpoint into a validated ONNX serving bundle.",
)


@app.command()
def export_command(
    checkpoint: Path = typer.Argument(
        ..., help="sft-train output (a Hugging Face checkpoint or a LoRA adapter dir)."
    ),
    onnx: bool = typer.Option(
        False, "--onnx", help="Export to ONNX through Optimum (the only format for now)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle directory to write."),
    task: str | None = typer.Option(
        None,
        help="text-classification, token-classification or "
        "text-generation-with-past [default: from config.json architectures].",
    ),
    atol: float = typer.Option(
        1e-4, help="Fail when any ONNX output differs from PyTorch by more than this."
    ),
    opset: int | None = typer.Option(None, help="ONNX opset [default: Optimum's choice for the model]."),
    max_length: int | None = typer.Option(
        None, help="Truncation length in the bundle [default: the training one]."
    ),
    optimize: str | None = typer.Option(
        None, help="onnxruntime graph optimization: O1, O2, O3 (CPU or GPU) or O4 (fp16, CUDA only)."
    ),
    quantize: str | None = typer.Option(
        None,
        help="int8: dynamic per-channel quantization for this CPU's "
        "instruction set (the bundle then holds the int8 model).",
    ),
    eval_file: Path | None = typer.Option(
        None,
        help="Labeled data: validation inputs, and an accuracy report "
        "of PyTorch / ONNX fp32 / ONNX int8 (entity F1 for tokens).",
    ),
    text_column: str | None = typer.Option(
        None, help="Text column of --eval-file [default: the training one]."
    ),
    label_column: str | None = typer.Option(
        None, help="Label column of --eval-file [default: the training one]."
    ),
    image_column: str | None = typer.Option(
        None, help="Image column of a CSV/JSONL --eval-file (image models) [default: the training one]."
    ),
    max_accuracy_drop: float = typer.Option(
        1.0, help="Fail when int8 loses more than this many points on --eval-file."
    ),
    triton_repo: Path | None = typer.Option(None, help="Also write a Triton model repository entry here."),
    keep_fp32: bool = typer.Option(
        False, "--keep-fp32", help="With --quantize, also keep the fp32 graph (model_fp32.onnx)."
    ),
) -> None:
    from .onnx import export_onnx

    if not onnx:
        raise InputError("choose an export format: --onnx")
    report = export_onnx(
        checkpoint,
        output,
        atol=atol,
        opset=opset,
        max_length=max_length,
        task=task,
        optimize=optimize,
        quantize=quantize,
        eval_file=eval_file,
        text_column=text_column,
        label_column=label_column,
        image_column=image_column,
        max_accuracy_drop=max_accuracy_drop,
        triton_repo=triton_repo,
        keep_fp32=keep_fp32,
        progress=lambda message: typer.echo(f"... {message}", err=True),
    )
    print_report(report, atol)


def print_report(report, atol: float) -> None:
    manifest = report.manifest
    inputs = "images" if manifest.get("task") == "image-classification" else "texts"
    typer.echo(f"validation against PyTorch on {report.num_samples} {inputs} (atol {atol:g}):")
    rows = [
        (name, d["max_abs_diff"], d["max_rel_diff"]) for name, d in manifest["validation"]["outputs"].items()
    ]
    int8 = manifest["validation"].get("int8", {}).get("outputs", {})
    typer.echo(
        f"  {'output':<24} {'max |diff|':>11} {'max rel':>10}" + (f" {'int8 |diff|':>12}" if int8 else "")
    )
    for name, max_abs, max_rel in _condensed(rows):
        extra = f" {int8[name]['max_abs_diff']:>12.2e}" if name in int8 else ""
        typer.echo(f"  {name:<24} {max_abs:>11.2e} {max_rel:>10.2e}" + extra)
    if len(_condensed(rows)) < len(rows):
        typer.echo("  (the largest of the present.* outputs; manifest.json lists every output)")
    metric = report.metric
    typer.echo("models:")
    header = f"  {'model':<14} {'file':<22} {'size MB':>8}" + (f" {metric:>20}" if metric else "")
    typer.echo(header)
    for row in report.models:
        value = f" {row[metric] * 100:>19.2f}%" if metric else ""
        typer.echo(f"  {row['model']:<14} {row['file']:<22} {row['size_bytes'] / 1e6:>8.1f}{value}")
    typer.echo(
        f"wrote {report.bundle_dir} ({manifest['task']}, opset {manifest['opset']}"
        + (f", {manifest['optimization']['level']}" if manifest.get("optimization") else "")
        + (", int8" if manifest.get("quantization") else "")
        + ")"
    )
    if manifest.get("quantization") and not metric:
        typer.echo(
            "note: int8 accuracy was not measured (pass --eval-file to measure it and gate on "
            "--max-accuracy-drop)"
        )
    if report.triton_dir is not None:
        typer.echo(f"wrote Triton model {report.triton_dir}")


def _condensed(rows):
    """Decoders have two present.* outputs per layer: past four of them, show the worst one only."""
    cache = [r for r in rows if r[0].startswith("present.")]
    if len(cache) <= 4:
        return rows
    return [r for r in rows if not r[0].startswith("present.")] + [max(cache, key=lambda r: r[1])]


@report_errors
def main() -> None:
    app()
