"""Question answering in sft-export: Optimum's `question-answering` graph (start_logits, end_logits),
validated against PyTorch on (question, context) pairs, and the manifest fields serve's windows need."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint
from .validate import OutputDiff, output_diff, worst_per_output

QA_TASK = "question-answering"
OUTPUTS = ("start_logits", "end_logits")
QUESTIONS = ("What is it?", "Who did this, and when did it happen?", "Where?")
BATCH = 8


def compare_qa(reference, variant: Path, texts: Sequence[str]) -> list[OutputDiff]:
    """start/end logits of the variant's model.onnx against PyTorch over the real tokens of question +
    context pairs (each text is a context; token_type_ids 1 on the context)."""
    from .runners import OrtSession

    session = OrtSession(variant / "model.onnx")
    diffs = []
    for first in range(0, len(texts), BATCH):
        contexts = list(texts[first : first + BATCH])
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(contexts))]
        enc = reference.tokenizer(
            questions,
            contexts,
            padding=True,
            truncation="only_second",
            max_length=reference.max_length,
            return_tensors="np",
        )
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
        real = feeds["attention_mask"].astype(bool)
        ort_out = session.run(feeds)
        torch_out = reference.forward(feeds)
        for name in OUTPUTS:
            ref = getattr(torch_out, name).float().numpy()
            diffs.append(output_diff(name, ort_out[name][real], ref[real]))
    return worst_per_output(diffs)


def qa_manifest(directory: Path, checkpoint: Checkpoint, max_length: int) -> dict[str, Any]:
    """The common manifest plus the window stride and answer length sft-train used (its defaults when the
    checkpoint has no train_config.yaml)."""
    from sft.qa import QA_DEFAULTS

    from .checkpoint import train_setting
    from .manifest import build_manifest

    manifest = build_manifest(directory, checkpoint, QA_TASK, max_length)
    manifest["labels"] = []  # a QA head's id2label (LABEL_0, LABEL_1) names nothing
    for key in ("doc_stride", "max_answer_length"):
        value = train_setting(checkpoint, key)
        manifest[key] = value if isinstance(value, int) else QA_DEFAULTS[key]
    manifest["doc_stride"] = min(manifest["doc_stride"], max_length // 2)
    return manifest
