"""The eval file's metric for PyTorch and for each ONNX variant, so int8's loss is measured, not guessed.

- text-classification: accuracy (single-label), ONNX through serve's TextClassifier.
- token-classification: entity-level micro F1 over the words that fit max_length (as sft-train scores).
- text-generation-with-past: next-token accuracy over the reply tokens (teacher forcing, as in training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sft.errors import InputError

from .checkpoint import Checkpoint, train_setting
from .runners import GENERATION_TASK, IMAGE_TASK, OrtSession, TorchModel

BATCH = 32
METRIC_BY_TASK = {
    "text-classification": "accuracy",
    "token-classification": "entity_f1",
    GENERATION_TASK: "next_token_accuracy",
    IMAGE_TASK: "accuracy",
}


@dataclass
class EvalSet:
    path: str
    task: str
    texts: list[str]  # what validation samples from
    labels: list[int] = field(default_factory=list)  # text-classification
    items: list[Any] = field(default_factory=list)  # sentences (token-classification) or records (generation)

    @property
    def metric(self) -> str:
        return METRIC_BY_TASK[self.task]

    def __len__(self) -> int:
        return len(self.labels or self.items)


def read_eval_set(
    path: str | Path,
    checkpoint: Checkpoint,
    text_column: str | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
) -> EvalSet:
    """Read and check the eval file before any model is loaded; its columns default to sft-train's."""
    path = str(path)
    task = checkpoint.task
    if task == IMAGE_TASK:  # a folder per class or a table of image paths
        from .vision import read_image_eval_set

        return read_image_eval_set(path, checkpoint, label_column, image_column)
    if task == "token-classification":
        from sft.ner import read_token_data

        sentences = read_token_data(path)
        label2id = _label2id(checkpoint)
        for s in sentences:
            for i, tag in enumerate(s.tags):
                if tag not in label2id:
                    raise InputError(
                        f"{s.where}: tag {tag!r} of token {i + 1} is not one of the model's labels "
                        f"({', '.join(label2id)})"
                    )
        return EvalSet(path, task, [" ".join(s.tokens) for s in sentences], items=sentences)
    if task == GENERATION_TASK:
        from sft.causal import read_instructions

        records = read_instructions(path)
        return EvalSet(path, task, [r.messages[-2]["content"] for r in records], items=records)
    return _read_classification(path, checkpoint, text_column, label_column)


def check_single_label(checkpoint: Checkpoint) -> None:
    problem = checkpoint.config.get("problem_type") or "single_label_classification"
    if problem != "single_label_classification":
        raise InputError(
            f"--eval-file: the accuracy report covers single-label classification; "
            f"{checkpoint.path} is {problem}"
        )


def _read_classification(
    path: str, checkpoint: Checkpoint, text_column: str | None, label_column: str | None
) -> EvalSet:
    from sft.data import extract_examples, read_table

    check_single_label(checkpoint)
    text_column = text_column or train_setting(checkpoint, "text_column") or "text"
    label_column = label_column or train_setting(checkpoint, "label_column") or "label"
    examples = extract_examples(read_table(path, role="eval"), text_column, label_column)
    label2id = _label2id(checkpoint)
    labels = []
    for label, where in zip(examples.labels or [], examples.where, strict=False):
        if label not in label2id:
            raise InputError(
                f"{where}: label {label!r} in column {label_column!r} is not one of the model's "
                f"labels ({', '.join(label2id)})"
            )
        labels.append(label2id[label])
    return EvalSet(path, "text-classification", examples.texts, labels=labels)


def _label2id(checkpoint: Checkpoint) -> dict[str, int]:
    id2label = checkpoint.config.get("id2label") or {}
    return {str(name): int(i) for i, name in id2label.items()}


def score_torch(eval_set: EvalSet, reference: TorchModel) -> float:
    if eval_set.task == IMAGE_TASK:
        from .vision import image_accuracy

        return image_accuracy(eval_set, lambda images: reference.logits(reference.encode_images(images)))
    if eval_set.task == "text-classification":
        return _accuracy(eval_set, lambda texts: reference.logits(reference.encode(texts)[0]))
    return _feeds_metric(eval_set, reference, reference.logits)


def score_onnx(eval_set: EvalSet, reference: TorchModel, variant: Path) -> float:
    """The metric of the ONNX model in a variant directory: text-classification through serve's
    TextClassifier (serve's tokenizer), images through serve's numpy preprocessing, the other tasks on the
    reference's tokenization."""
    if eval_set.task == IMAGE_TASK:
        from .vision import image_accuracy, onnx_logits_of_images

        return image_accuracy(eval_set, onnx_logits_of_images(variant))
    if eval_set.task == "text-classification":
        from serve.runtime import TextClassifier

        return _accuracy(eval_set, TextClassifier.from_bundle(variant, verify=False).logits)
    return _feeds_metric(eval_set, reference, OrtSession(variant / "model.onnx").logits)


def _accuracy(eval_set: EvalSet, logits_of_texts) -> float:
    texts = eval_set.texts
    preds = np.concatenate(
        [logits_of_texts(texts[i : i + BATCH]).argmax(-1) for i in range(0, len(texts), BATCH)]
    )
    return float(np.mean(preds == np.asarray(eval_set.labels)))


def _feeds_metric(eval_set: EvalSet, reference: TorchModel, logits_of) -> float:
    metric = _entity_f1 if eval_set.task == "token-classification" else _next_token_accuracy
    return metric(eval_set, reference, logits_of)


def _entity_f1(eval_set: EvalSet, reference: TorchModel, logits_of) -> float:
    from sft.ner import entity_report

    id2label = {int(i): name for i, name in reference.model.config.id2label.items()}
    true_tags, pred_tags = [], []
    sentences = eval_set.items
    for start in range(0, len(sentences), BATCH):
        chunk = sentences[start : start + BATCH]
        feeds, enc = reference.encode([s.tokens for s in chunk], split_into_words=True)
        preds = logits_of(feeds).argmax(-1)
        for row, s in enumerate(chunk):
            firsts, previous = {}, None
            for position, word in enumerate(enc.word_ids(row)):
                if word is not None and word != previous:
                    firsts[word] = position
                previous = word
            kept = sorted(firsts)  # words cut by max_length are not scored, for any of the models
            true_tags.append([s.tags[w] for w in kept])
            pred_tags.append([id2label[int(preds[row, firsts[w]])] for w in kept])
    return float(entity_report(true_tags, pred_tags)["f1"])


def _next_token_accuracy(eval_set: EvalSet, reference: TorchModel, logits_of) -> float:
    from sft.causal import render

    from .runners import position_ids

    tokenizer, pad = reference.tokenizer, reference.tokenizer.pad_token_id
    rows = []
    for record in eval_set.items:
        prompt, reply = render(tokenizer, record)
        ids = (prompt + reply)[: reference.max_length]
        rows.append((ids, len(prompt)))
    hits = total = 0
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = np.full((len(chunk), width), pad, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for r, (ids, _) in enumerate(chunk):
            input_ids[r, : len(ids)], mask[r, : len(ids)] = ids, 1
        preds = logits_of(
            {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids(mask)}
        ).argmax(-1)
        for r, (ids, prompt_len) in enumerate(chunk):
            targets = range(max(prompt_len, 1), len(ids))  # token t is predicted at position t - 1
            hits += sum(int(preds[r, t - 1] == ids[t]) for t in targets)
            total += len(targets)
    if not total:
        raise InputError(f"{eval_set.path}: no reply token fits in max_length {reference.max_length}")
    return hits / total
