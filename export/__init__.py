"""Export a fine-tuned checkpoint to a validated ONNX serving bundle (through Optimum).

Public API::

    from export import export_onnx
    report = export_onnx("runs/model", "runs/bundle", atol=1e-4)                    # fp32, validated
    report = export_onnx("runs/model", "runs/int8", quantize="int8", eval_file="dev.tsv",
                         max_accuracy_drop=1.0, triton_repo="triton/")              # + accuracy report
"""

from .onnx import ExportReport, export_onnx
from .validate import ValidationError

__all__ = ["ExportReport", "ValidationError", "export_onnx"]
