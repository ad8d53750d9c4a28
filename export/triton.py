"""A Triton Inference Server model repository entry for a bundle's model.onnx (onnxruntime backend).

    REPO/NAME/config.pbtxt      inputs/outputs with Triton data types; -1 for dynamic axes
    REPO/NAME/1/model.onnx      the bundle's graph (version 1)
    REPO/NAME/labels.txt        classification labels, one per line (Triton's label_filename)

When every input and output has a dynamic first axis, that axis is the batch: it leaves `dims`,
`max_batch_size` is set and requests are batched dynamically. Tokenization stays with the client
(the bundle's tokenizer.json).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from sft.atomic import fresh_work_dir
from sft.errors import InputError

MAX_BATCH_SIZE = 32
MAX_QUEUE_DELAY_US = 1000
# onnx.TensorProto element types -> Triton's
TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    16: "TYPE_BF16",
}


def model_name(bundle_dir: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", bundle_dir.resolve().name).lstrip(".")
    return name or "model"


def check_repo(repo: Path, name: str) -> None:
    """Refuse a repo path that is a file or not writable, or an entry of that name that is not a Triton model;
    nothing is created until the export has succeeded."""
    if repo.exists() and not repo.is_dir():
        raise InputError(f"--triton-repo {repo}: exists and is not a directory")
    entry = repo / name
    if entry.exists() and not (entry / "config.pbtxt").is_file():
        raise InputError(f"--triton-repo {repo}: {entry} exists and is not a Triton model (no config.pbtxt)")
    existing = next(p for p in (repo.resolve(), *repo.resolve().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise InputError(f"--triton-repo {repo}: {existing} is not a writable directory")


def tensor_specs(values) -> list[dict[str, Any]]:
    """name, Triton data type and dims (-1 where the axis is symbolic) of ONNX graph inputs or outputs."""
    specs = []
    for v in values:
        t = v.type.tensor_type
        if t.elem_type not in TRITON_TYPES:
            raise InputError(f"{v.name}: ONNX element type {t.elem_type} has no Triton data type")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        specs.append({"name": v.name, "data_type": TRITON_TYPES[t.elem_type], "dims": dims})
    return specs


def model_config(name: str, graph, labels: list[str], max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """config.pbtxt text for the ONNX `graph` (an onnx.GraphProto)."""
    inputs, outputs = tensor_specs(graph.input), tensor_specs(graph.output)
    batched = all(s["dims"] and s["dims"][0] == -1 for s in inputs + outputs)
    if batched:
        for s in inputs + outputs:
            s["dims"] = s["dims"][1:]
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size if batched else 0}",
    ]
    for section, specs in (("input", inputs), ("output", outputs)):
        lines.append(f"{section} [")
        for i, s in enumerate(specs):
            extra = '\n    label_filename: "labels.txt"' if section == "output" and labels and i == 0 else ""
            dims = ", ".join(str(d) for d in s["dims"]) or ""
            lines.append(
                f'  {{\n    name: "{s["name"]}"\n    data_type: {s["data_type"]}\n'
                f"    dims: [ {dims} ]{extra}\n  }}" + ("," if i < len(specs) - 1 else "")
            )
        lines.append("]")
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}")
    lines.append("instance_group [\n  {\n    count: 1\n    kind: KIND_AUTO\n  }\n]")
    return "\n".join(lines) + "\n"


def build_entry(repo: Path, name: str, onnx_file: Path, labels: list[str]) -> Path:
    """Write the model entry into a hidden work directory inside `repo`; `publish` renames it into place."""
    from .manifest import graph_of

    repo.mkdir(parents=True, exist_ok=True)
    work = fresh_work_dir(repo / name)
    (work / "1").mkdir()
    shutil.copy2(onnx_file, work / "1" / "model.onnx")
    if labels:
        (work / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    config = model_config(name, graph_of(onnx_file).graph, labels)
    (work / "config.pbtxt").write_text(config, encoding="utf-8")
    return work
