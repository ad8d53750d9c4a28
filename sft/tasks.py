"""What differs between the three tasks, behind one small interface the training loop calls.

Each task: reads and checks its data (before any model is loaded), says which Auto class and config
kwargs build the model, tokenizes, pads a batch, computes the loss through our kernels, and evaluates.

- SequenceClassification: single-label (softmax CE), multi-label (sigmoid BCE + threshold), regression (MSE).
- TokenClassification: CoNLL / JSONL tags aligned to the first sub-token; entity-level P/R/F1.
- CausalLM: instruction records -> prompt-masked labels, optional packing; the loss is the fused
  linear + cross-entropy over the LM head, so the N x V logits never exist.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainConfig, parse_class_weights
from .data import LabelMap, extract_examples, read_table
from .errors import InputError
from .metrics import classification_report


def make_task(cfg: TrainConfig) -> Task:
    return {
        "sequence-classification": SequenceClassification,
        "token-classification": TokenClassification,
        "causal-lm": CausalLM,
        "image-classification": _image_classification,
        "question-answering": _question_answering,
        "seq2seq": _seq2seq,
    }[cfg.task](cfg)


def _question_answering(cfg: TrainConfig) -> Task:
    from .qa import QuestionAnswering  # sft/qa.py builds on this module

    return QuestionAnswering(cfg)


def _seq2seq(cfg: TrainConfig) -> Task:
    from .seq2seq import Seq2Seq  # sft/seq2seq.py builds on this module

    return Seq2Seq(cfg)


def _image_classification(cfg: TrainConfig) -> Task:
    from .vision import ImageClassification  # Pillow and the image processors only when asked for

    return ImageClassification(cfg)


def resolve_class_weights(
    cfg: TrainConfig, task: Task, train_rows: list[dict[str, Any]]
) -> list[float] | None:
    """--class-weights as one weight per label: given, or balanced = n / (k · n_c) over the labels the loss
    sees (training rows after --max-train-samples; for tokens, the labeled first sub-tokens). A class with
    no examples counts as one, so its weight stays finite."""
    if cfg.class_weights is None:
        return None
    spec = parse_class_weights(cfg.class_weights)
    names = task.labels.names
    if spec == "balanced":
        counts = task.label_counts(train_rows)
        n, k = sum(counts), len(counts)
        return [n / (k * max(c, 1)) for c in counts]
    if len(spec) != len(names):
        raise InputError(
            f"--class-weights: {len(spec)} weights for {len(names)} labels (in order: {', '.join(names)})"
        )
    return spec


def pad_rows(rows: list[dict[str, Any]], pad_values: dict[str, int], device) -> dict[str, torch.Tensor]:
    """Right-pad the list-valued fields of `rows` to the longest row; scalar fields become a 1-D tensor."""
    out = {}
    for key, fill in pad_values.items():
        if key not in rows[0]:
            continue
        width = max(len(r[key]) for r in rows)
        out[key] = torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in rows], device=device)
    return out


def first_n(cfg, role: str, items):
    """The leading examples of the train/eval split that are kept (--max-train-samples /
    --max-eval-samples)."""
    limit = cfg.max_train_samples if role == "train" else cfg.max_eval_samples
    return items if limit is None else items[:limit]


class Task:
    auto_model: str
    peft_task_type: str
    default_metric: str
    lower_is_better = ("loss", "perplexity")
    class_weight: torch.Tensor | None = None  # per-label weights of the training loss (--class-weights)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def better(self, metric: str, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new < old if metric in self.lower_is_better else new > old

    def auto_class(self):
        import transformers

        return getattr(transformers, self.auto_model)

    def read_splits(self, read) -> tuple[list, list | None]:
        """`read` of --train and of --eval (None without one), each cut by first_n."""
        train = first_n(self.cfg, "train", read(self.cfg.train))
        return train, first_n(self.cfg, "eval", read(self.cfg.eval)) if self.cfg.eval else None

    def model_kwargs(self) -> dict[str, Any]:
        return {}

    def length(self, row: dict[str, Any]) -> int:
        return len(row["input_ids"])


class SequenceClassification(Task):
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.problem = cfg.problem_type
        self.default_metric = "rmse" if self.problem == "regression" else "f1_macro"
        self.lower_is_better = ("loss", "rmse", "mae")

    def load(self) -> None:
        cfg = self.cfg
        self.train_ex = self._examples(cfg.train, "train")
        self.eval_ex = self._examples(cfg.eval, "eval") if cfg.eval else None
        if self.problem == "regression":
            self.labels = None
            self.train_y = self._floats(self.train_ex)
            self.eval_y = self._floats(self.eval_ex) if self.eval_ex else None
            return
        if self.problem == "multi-label":
            split = [self._split(v) for v in self.train_ex.labels]
            self.labels = LabelMap.from_labels([name for names in split for name in names])
            self.train_y = self._multi_hot(self.train_ex)
            self.eval_y = self._multi_hot(self.eval_ex) if self.eval_ex else None
            return
        self.labels = LabelMap.from_labels(self.train_ex.labels)
        if len(self.labels.names) < 2:
            raise InputError(
                f"{cfg.train}: column {cfg.label_column!r} has a single label "
                f"({self.labels.names[0]!r}); classification needs at least two"
            )
        self.train_y = self.labels.encode(self.train_ex.labels, self.train_ex.where, cfg.label_column)
        self.eval_y = (
            self.labels.encode(self.eval_ex.labels, self.eval_ex.where, cfg.label_column)
            if self.eval_ex
            else None
        )

    def _examples(self, spec, role):
        return first_n(
            self.cfg,
            role,
            extract_examples(
                read_table(spec, role=role),
                self.cfg.text_column,
                self.cfg.label_column,
                self.cfg.text_pair_column,
            ),
        )

    def _floats(self, ex) -> list[float]:
        out = []
        for value, where in zip(ex.labels, ex.where, strict=False):
            try:
                out.append(float(value))
            except ValueError:
                raise InputError(
                    f"{where}: label {value!r} in column {self.cfg.label_column!r} is not a number "
                    f"(--problem-type regression)"
                ) from None
        return out

    def _split(self, value: str) -> list[str]:
        if value.startswith("["):  # a JSON list kept as text by label_key
            import ast

            try:
                return [str(v) for v in ast.literal_eval(value)]
            except (ValueError, SyntaxError):
                pass
        return [v.strip() for v in value.split(self.cfg.label_separator) if v.strip()]

    def _multi_hot(self, ex) -> list[list[float]]:
        out = []
        for value, where in zip(ex.labels, ex.where, strict=False):
            hot = [0.0] * len(self.labels.names)
            names = self._split(value)
            for i in self.labels.encode(names, [where] * len(names), self.cfg.label_column):
                hot[i] = 1.0
            out.append(hot)
        return out

    def model_kwargs(self):
        if self.problem == "regression":
            return {"num_labels": 1, "problem_type": "regression"}
        return label_model_kwargs(self.labels, self.problem)

    def encode(self, tokenizer):
        def rows(ex, ys):
            enc = tokenizer(ex.texts, ex.pairs, truncation=True, max_length=self.cfg.max_length)
            keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
            return [{**{k: enc[k][i] for k in keys}, "label": ys[i]} for i in range(len(ex))]

        return rows(self.train_ex, self.train_y), rows(self.eval_ex, self.eval_y) if self.eval_ex else None

    def collate(self, rows, pad_id, device):
        batch = pad_rows(rows, {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}, device)
        dtype = torch.long if self.problem == "single-label" else torch.float32
        batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=dtype, device=device)
        return batch

    def loss(self, model, batch, kernels_backend):
        from kernels import cross_entropy

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        y = batch["labels"]
        if self.problem == "regression":
            return torch.nn.functional.mse_loss(logits.squeeze(-1).float(), y)
        if self.problem == "multi-label":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        return cross_entropy(
            logits,
            y,
            weight=self.class_weight,
            label_smoothing=self.cfg.label_smoothing,
            backend=kernels_backend,
            inplace=False,
        )

    def label_counts(self, rows) -> list[int]:
        counts = [0] * len(self.labels.names)
        for r in rows:
            counts[r["label"]] += 1
        return counts

    @torch.no_grad()
    def evaluate(self, model, rows, pad_id, device, batch_size, kernels_backend):
        outputs, total = [], 0.0
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.collate([rows[i] for i in idx], pad_id, device)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            total += self._eval_loss(logits, batch["labels"]).item() * len(idx)
            outputs.extend(zip(idx, logits.cpu(), strict=False))
        logits = torch.stack([lg for _, lg in sorted(outputs, key=lambda t: t[0])])
        metrics = {"loss": total / len(rows)}
        y = [r["label"] for r in rows]
        if self.problem == "regression":
            err = logits.squeeze(-1) - torch.tensor(y)
            metrics.update(rmse=float(err.pow(2).mean().sqrt()), mae=float(err.abs().mean()))
        else:
            metrics.update(label_metrics(logits, y, self.problem, self.cfg.threshold, self.labels.names))
        return metrics

    def _eval_loss(self, logits, y):
        if self.problem == "regression":
            return torch.nn.functional.mse_loss(logits.squeeze(-1), y)
        if self.problem == "multi-label":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        return torch.nn.functional.cross_entropy(logits, y)


def label_model_kwargs(labels: LabelMap, problem: str) -> dict[str, Any]:
    """The model's label set and HF problem_type for a single- or multi-label classifier."""
    return {
        "num_labels": len(labels.names),
        "id2label": labels.id2label(),
        "label2id": labels.label2id(),
        "problem_type": (
            "multi_label_classification" if problem == "multi-label" else "single_label_classification"
        ),
    }


def label_metrics(logits: torch.Tensor, y: list, problem: str, threshold: float, names: list[str]) -> dict:
    """Evaluation metrics of a single- or multi-label classifier from its logits and the true labels."""
    if problem == "multi-label":
        return _multi_label_report(torch.sigmoid(logits) >= threshold, torch.tensor(y) > 0.5, names)
    return classification_report(y, logits.argmax(-1).tolist(), names)


def _multi_label_report(pred: torch.Tensor, true: torch.Tensor, names: list[str]) -> dict[str, Any]:
    tp = (pred & true).sum(0).double()
    fp = (pred & ~true).sum(0).double()
    fn = (~pred & true).sum(0).double()
    p = torch.where(tp + fp > 0, tp / (tp + fp), torch.zeros_like(tp))
    r = torch.where(tp + fn > 0, tp / (tp + fn), torch.zeros_like(tp))
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r), torch.zeros_like(tp))
    micro_p = tp.sum() / max(1.0, float((tp + fp).sum()))
    micro_r = tp.sum() / max(1.0, float((tp + fn).sum()))
    micro_f1 = 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r > 0 else torch.tensor(0.0)
    return {
        "subset_accuracy": float((pred == true).all(1).double().mean()),
        "precision_macro": float(p.mean()),
        "recall_macro": float(r.mean()),
        "f1_macro": float(f1.mean()),
        "f1_micro": float(micro_f1),
        "per_class": {
            n: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f1[i]),
                "support": int(true[:, i].sum()),
            }
            for i, n in enumerate(names)
        },
    }


class TokenClassification(Task):
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    default_metric = "f1"

    def load(self) -> None:
        from .ner import label_list, read_token_data

        self.train_sents, self.eval_sents = self.read_splits(read_token_data)
        self.labels = LabelMap(label_list(self.train_sents))

    def model_kwargs(self):
        return {
            "num_labels": len(self.labels.names),
            "id2label": self.labels.id2label(),
            "label2id": self.labels.label2id(),
        }

    def encode(self, tokenizer):
        from .ner import encode_sentences

        l2i = self.labels.label2id()
        train = encode_sentences(tokenizer, self.train_sents, l2i, self.cfg.max_length)
        return train, encode_sentences(
            tokenizer, self.eval_sents, l2i, self.cfg.max_length
        ) if self.eval_sents else None

    def collate(self, rows, pad_id, device):
        return pad_rows(
            rows, {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": -100}, device
        )

    def loss(self, model, batch, kernels_backend):
        from kernels import cross_entropy

        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return cross_entropy(
            logits.flatten(0, 1),
            batch["labels"].flatten(),
            weight=self.class_weight,
            ignore_index=-100,
            label_smoothing=self.cfg.label_smoothing,
            backend=kernels_backend,
            inplace=False,
        )

    def label_counts(self, rows) -> list[int]:
        counts = [0] * len(self.labels.names)
        for r in rows:
            for y in r["labels"]:
                if y != -100:
                    counts[y] += 1
        return counts

    @torch.no_grad()
    def evaluate(self, model, rows, pad_id, device, batch_size, kernels_backend):
        from .ner import decode_predictions, entity_report

        id2label = self.labels.id2label()
        true_tags, pred_tags, total, count = [], [], 0.0, 0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = self.collate(chunk, pad_id, device)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            mask = batch["labels"] != -100
            total += torch.nn.functional.cross_entropy(
                logits[mask], batch["labels"][mask], reduction="sum"
            ).item()
            count += int(mask.sum())
            pred_ids = logits.argmax(-1).tolist()
            for r, p in zip(chunk, pred_ids, strict=False):
                true_tags.extend(decode_predictions([r["labels"]], [r["labels"]], id2label))
                pred_tags.extend(decode_predictions([p[: len(r["labels"])]], [r["labels"]], id2label))
        return {"loss": total / max(1, count), **entity_report(true_tags, pred_tags)}


class CausalLM(Task):
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    default_metric = "loss"

    def load(self) -> None:
        from .causal import read_instructions

        self.train_records, self.eval_records = self.read_splits(read_instructions)
        self.labels = None

    def encode(self, tokenizer):
        from .causal import encode_records, pack

        train = encode_records(tokenizer, self.train_records, self.cfg.max_length)
        evals = (
            encode_records(tokenizer, self.eval_records, self.cfg.max_length) if self.eval_records else None
        )
        if self.cfg.packing:
            train = pack(train, self.cfg.max_length)
        return train, evals

    def collate(self, rows, pad_id, device):
        from .causal import collate_causal

        return {k: v.to(device) for k, v in collate_causal(rows, pad_id).items()}

    def loss(self, model, batch, kernels_backend, *, labels_key: str = "labels"):
        """Mean next-token loss over labeled positions, through the fused linear + cross-entropy."""
        from kernels import fused_linear_cross_entropy

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        inputs = {k: batch[k] for k in ("input_ids", "position_ids") if k in batch}
        inputs["attention_mask"] = self.attention_mask(batch, kernels_backend)
        hidden = base.get_decoder()(**inputs).last_hidden_state
        head = base.get_output_embeddings()
        h = hidden[:, :-1].flatten(0, 1)
        y = batch[labels_key][:, 1:].flatten()
        return fused_linear_cross_entropy(
            h,
            head.weight,
            y,
            bias=head.bias,
            ignore_index=-100,
            label_smoothing=self.cfg.label_smoothing,
            backend=kernels_backend,
        )

    def attention_mask(self, batch, kernels_backend: str = "torch"):
        """Packed rows need block-diagonal causal attention: each packed sequence sees only itself.

        Our Triton attention (patched in when kernels_backend is "triton") reads the sequence starts off
        position_ids and runs varlen; the other attention paths get an explicit 4-D mask
        (0 = attend, -inf = masked)."""
        if not self.cfg.packing or kernels_backend == "triton":
            return batch["attention_mask"]
        pos = batch["position_ids"]
        b, s = pos.shape
        seq_id = torch.cumsum((pos == 0).long(), dim=1)  # 1, 1, 1, 2, 2, ... per row
        same = seq_id[:, :, None] == seq_id[:, None, :]
        causal = torch.ones(s, s, dtype=torch.bool, device=pos.device).tril()
        real = batch["attention_mask"].bool()
        allowed = same & causal & real[:, None, :] & real[:, :, None]
        allowed |= torch.eye(s, dtype=torch.bool, device=pos.device)  # padding rows attend to themselves
        mask = torch.zeros(b, 1, s, s, device=pos.device)
        return mask.masked_fill(~allowed[:, None], torch.finfo(mask.dtype).min)

    @torch.no_grad()
    def evaluate(self, model, rows, pad_id, device, batch_size, kernels_backend):
        from .causal import perplexity

        total, count = 0.0, 0
        for start in range(0, len(rows), batch_size):
            batch = self.collate(rows[start : start + batch_size], pad_id, device)
            n = int((batch["labels"][:, 1:] != -100).sum())
            if n:
                total += self.loss(model, batch, kernels_backend).item() * n
                count += n
        mean = total / max(1, count)
        return {"loss": mean, "perplexity": perplexity(mean), "tokens": count}


def steps_per_epoch(n_rows: int, batch_size: int, grad_accum: int, world_size: int = 1) -> int:
    return max(1, math.ceil(n_rows / (batch_size * grad_accum * world_size)))
