"""Export a fine-tuned checkpoint to a validated ONNX serving bundle (through Optimum).

Public API::

    from export import export_onnx
    report = export_onnx("runs/model", "runs/bundle", atol=1e-4)
"""

from .onnx import ExportReport, ValidationError, export_onnx

__all__ = ["ExportReport", "ValidationError", "export_onnx"]
