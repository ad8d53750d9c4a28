"""Extractive question answering (`--task question-answering`): SQuAD data, windows, span loss, EM / F1.

- Data: SQuAD v1.1 / v2.0 JSON (data -> paragraphs -> context, qas), or rows (JSONL, CSV, Parquet, hub)
  with question, context and answers columns; answers as {"text": [...], "answer_start": [...]} or a list
  of {"text", "answer_start"} (in CSV, that JSON as text). Every answer_start is checked against the
  context. Questions without answers need --version-2-with-negative.
- Training rows: one per window of the context (--doc-stride tokens shared by neighbours); start/end
  labels from the tokenizer's offsets; a window that does not hold the whole answer points at [CLS].
- Evaluation: the best span over all windows (serve.qa.squad_answer: n-best, --max-answer-length, the
  v2.0 null threshold), scored with the official SQuAD exact match and F1 (in percent, as the official
  scripts print them).
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .errors import InputError
from .tasks import Task, pad_rows

# Options of this task (defaults as transformers' run_qa.py), defined once in TrainConfig.
QA_OPTIONS = (
    "doc_stride",
    "max_answer_length",
    "n_best_size",
    "version_2_with_negative",
    "null_score_diff_threshold",
    "question_column",
    "context_column",
    "answers_column",
)
QA_DEFAULTS = {name: TrainConfig.__dataclass_fields__[name].default for name in QA_OPTIONS}


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, answer_start); empty for an unanswerable question
    where: str


# -- the official SQuAD metric ----------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace (official SQuAD)."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, *, version_2: bool = False) -> float:
    """Token-overlap F1 of the normalised answers. SQuAD v2.0 counts two empty answers as a match
    (v1.1's script gives 0 whenever nothing overlaps)."""
    pred, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2 and (not pred or not true):
        return float(pred == true)
    common = collections.Counter(pred) & collections.Counter(true)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(
    predictions: dict[str, str], golds: dict[str, list[str]], *, version_2: bool = False
) -> dict[str, float]:
    """exact_match and f1 in percent, each the max over an example's gold answers, averaged over examples.

    With version_2, an unanswerable example's gold list is [""] (as is one whose answers all normalise to
    nothing) and has_ans_* / no_ans_* split the scores."""
    em, f1 = {}, {}
    for qid, answers in golds.items():
        if version_2:
            answers = [a for a in answers if normalize_answer(a)] or [""]
        pred = predictions.get(qid, "")
        em[qid] = max(exact_match(pred, a) for a in answers)
        f1[qid] = max(f1_score(pred, a, version_2=version_2) for a in answers)
    out = {"exact_match": _percent(em.values()), "f1": _percent(f1.values()), "examples": len(golds)}
    if version_2:
        has = {q for q, a in golds.items() if any(normalize_answer(x) for x in a)}
        for name, ids in (("has_ans", has), ("no_ans", set(golds) - has)):
            if ids:
                out[f"{name}_exact"] = _percent(em[q] for q in ids)
                out[f"{name}_f1"] = _percent(f1[q] for q in ids)
                out[f"{name}_total"] = len(ids)
    return out


def _percent(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0


# -- reading -----------------------------------------------------------------------------------------------


def read_qa(spec: str, cfg_get, *, version_2: bool) -> list[QAExample]:
    """Examples from SQuAD JSON (by its shape) or from a table with question/context/answers columns."""
    path = Path(spec)
    if path.suffix.lower() == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None  # maybe JSON Lines: the table reader says what is wrong
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            return _check(_squad_examples(path, data), version_2)
    return _check(_table_examples(spec, cfg_get), version_2)


def _squad_examples(path: Path, data: dict[str, Any]) -> list[QAExample]:
    out = []
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(f"{path}: data[{a}]: missing 'paragraphs' (not SQuAD JSON)")
        for p, paragraph in enumerate(paragraphs):
            at = f"{path}: data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise InputError(f"{at}: missing or empty 'context'")
            for i, qa in enumerate(paragraph.get("qas") or []):
                where = f"{at}.qas[{i}]"
                question = qa.get("question") if isinstance(qa, dict) else None
                if not isinstance(question, str) or not question.strip():
                    raise InputError(f"{where}: missing or empty 'question'")
                answers = [] if qa.get("is_impossible") else _answers(qa.get("answers", []), where)
                out.append(QAExample(str(qa.get("id", where)), question, context, answers, where))
    if not out:
        raise InputError(f"{path}: no questions")
    return out


def _table_examples(spec: str, cfg_get) -> list[QAExample]:
    from .data import read_table

    table = read_table(spec)
    columns = {opt: cfg_get(opt) for opt in ("question_column", "context_column", "answers_column")}
    for option, column in columns.items():
        if column not in table.columns:
            raise InputError(
                f"{table.source}: no column {column!r} for --{option.replace('_', '-')} "
                f"(columns: {', '.join(map(str, table.columns))})"
            )
    q_col, c_col, a_col = columns.values()
    out = []
    for n, (row, where) in enumerate(zip(table.rows, table.where, strict=True)):
        texts = {}
        for col in (q_col, c_col):
            value = row.get(col)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: missing or empty text in column {col!r}")
            texts[col] = value
        answers = _answers(row.get(a_col), f"{where}: column {a_col!r}")
        out.append(QAExample(str(row.get("id", n)), texts[q_col], texts[c_col], answers, where))
    return out


def _answers(value: Any, where: str) -> list[tuple[str, int]]:
    """SQuAD's list of {"text", "answer_start"} or datasets' {"text": [...], "answer_start": [...]}."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise InputError(f"{where}: answers are not JSON ({value[:40]!r})") from None
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise InputError(f"{where}: answers need lists 'text' and 'answer_start' of equal length")
        value = [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=True)]
    if value is None:
        value = []
    if not isinstance(value, list):
        raise InputError(f"{where}: answers must be a list of {{'text', 'answer_start'}}")
    out = []
    for a in value:
        text = a.get("text") if isinstance(a, dict) else None
        start = a.get("answer_start") if isinstance(a, dict) else None
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise InputError(f"{where}: each answer needs 'text' (string) and 'answer_start' (integer)")
        out.append((text, start))
    return out


def _check(examples: list[QAExample], version_2: bool) -> list[QAExample]:
    for ex in examples:
        if not ex.answers and not version_2:
            raise InputError(
                f"{ex.where}: question without an answer (SQuAD v2.0 data needs --version-2-with-negative)"
            )
        for text, start in ex.answers:
            if ex.context[start : start + len(text)] != text:
                found = ex.context[start : start + len(text)]
                raise InputError(
                    f"{ex.where}: answer_start {start} does not point at the answer {text!r} "
                    f"(the context has {found!r} there)"
                )
    return examples


# -- windows -----------------------------------------------------------------------------------------------


def encode_windows(tokenizer, examples: list[QAExample], *, max_length: int, doc_stride: int) -> list[dict]:
    """One row per window: input ids, start/end labels (at [CLS] = 0 when the window misses the answer),
    and what evaluation needs: the example index, the context mask and the character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("--task question-answering needs a fast tokenizer (one with a tokenizer.json)")
    rows = []
    for i, ex in enumerate(examples):
        try:
            enc = tokenizer(
                ex.question.lstrip(),
                ex.context,
                truncation="only_second",
                max_length=max_length,
                stride=doc_stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
        except Exception as e:  # the Rust tokenizer: "Truncation error: ..."
            raise InputError(
                f"{ex.where}: the question leaves no room for the context with --max-length {max_length} "
                f"and --doc-stride {doc_stride} ({str(e).splitlines()[0]})"
            ) from None
        for w in range(len(enc["input_ids"])):
            seq = enc.sequence_ids(w)
            offsets = enc["offset_mapping"][w]
            allowed = [s == 1 for s in seq]
            start, end = _positions(ex, offsets, allowed)
            row = {k: enc[k][w] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            rows.append(
                {
                    **row,
                    "start_positions": start,
                    "end_positions": end,
                    "example": i,
                    "allowed": allowed,
                    "offsets": [tuple(o) for o in offsets],
                }
            )
    return rows


def _positions(ex: QAExample, offsets, allowed) -> tuple[int, int]:
    """Token indices of the first answer's first and last token, or (0, 0) when the window lacks it."""
    if not ex.answers:
        return 0, 0
    text, char_start = ex.answers[0]
    char_end = char_start + len(text)
    ctx = [i for i, a in enumerate(allowed) if a]
    if offsets[ctx[0]][0] > char_start or offsets[ctx[-1]][1] < char_end:
        return 0, 0
    start = next(i for i in ctx if offsets[i][1] > char_start)
    end = next(i for i in reversed(ctx) if offsets[i][0] < char_end)
    return start, end


# -- the task ----------------------------------------------------------------------------------------------


class QuestionAnswering(Task):
    auto_model = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    default_metric = "f1"
    labels = None

    def option(self, name: str):
        return getattr(self.cfg, name)

    def load(self) -> None:
        v2 = bool(self.option("version_2_with_negative"))
        self.train_ex, self.eval_ex = self.read_splits(lambda path: read_qa(path, self.option, version_2=v2))
        stride, length = self.option("doc_stride"), self.cfg.max_length
        if not 0 <= stride < length:
            raise InputError(
                f"--doc-stride must be in [0, --max-length), got {stride} (--max-length {length})"
            )

    def encode(self, tokenizer):
        kw = {"max_length": self.cfg.max_length, "doc_stride": self.option("doc_stride")}
        train = encode_windows(tokenizer, self.train_ex, **kw)
        return train, encode_windows(tokenizer, self.eval_ex, **kw) if self.eval_ex else None

    def collate(self, rows, pad_id, device):
        batch = pad_rows(rows, {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}, device)
        for key in ("start_positions", "end_positions"):
            batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long, device=device)
        return batch

    def loss(self, model, batch, kernels_backend):
        """Mean of the start and end cross-entropies, through our kernel."""
        from kernels import cross_entropy

        out = model(**{k: v for k, v in batch.items() if not k.endswith("_positions")})
        return (
            sum(
                cross_entropy(
                    logits,
                    batch[key],
                    label_smoothing=self.cfg.label_smoothing,
                    backend=kernels_backend,
                    inplace=False,
                )
                for logits, key in ((out.start_logits, "start_positions"), (out.end_logits, "end_positions"))
            )
            / 2
        )

    def label_counts(self, rows) -> list[int]:
        raise InputError("--class-weights does not apply to --task question-answering")

    @torch.no_grad()
    def evaluate(self, model, rows, pad_id, device, batch_size, kernels_backend):
        starts, ends, total = [], [], 0.0
        for first in range(0, len(rows), batch_size):
            batch = self.collate(rows[first : first + batch_size], pad_id, device)
            out = model(**{k: v for k, v in batch.items() if not k.endswith("_positions")})
            s, e = out.start_logits.float(), out.end_logits.float()
            ce = torch.nn.functional.cross_entropy
            total += ((ce(s, batch["start_positions"]) + ce(e, batch["end_positions"])) / 2).item() * len(s)
            starts.extend(s.cpu().numpy())
            ends.extend(e.cpu().numpy())
        predictions = self.predictions(rows, starts, ends)
        golds = {ex.id: [t for t, _ in ex.answers] for ex in self.eval_ex}
        metrics = squad_metrics(predictions, golds, version_2=bool(self.option("version_2_with_negative")))
        return {"loss": total / max(1, len(rows)), **metrics}

    def predictions(self, rows, starts, ends) -> dict[str, str]:
        """Each eval example's answer text, searched over all its windows (rows in example order)."""
        from serve.qa import squad_answer

        by_example = collections.defaultdict(list)
        for r, s, e in zip(rows, starts, ends, strict=True):
            by_example[r["example"]].append((r, s, e))
        out = {}
        for i, parts in by_example.items():
            ex = self.eval_ex[i]
            out[ex.id], _ = squad_answer(
                ex.context,
                [(r["offsets"], np.asarray(r["allowed"])) for r, _, _ in parts],
                [s for _, s, _ in parts],
                [e for _, _, e in parts],
                n_best=self.option("n_best_size"),
                max_answer_length=self.option("max_answer_length"),
                version_2=bool(self.option("version_2_with_negative")),
                null_threshold=self.option("null_score_diff_threshold"),
            )
        return out
