"""Extractive question answering with numpy and `tokenizers` only: windows over long contexts, span search.

A context longer than the model's max_length is cut into overlapping windows (question first, the context
truncated with `doc_stride` tokens shared between neighbours), exactly as transformers' fast tokenizers
do with `truncation="only_second", return_overflowing_tokens=True`. Each window gives start and end
logits; the best span is searched over every window.

Two ways to score a span, both from `top_spans`:
- `pipeline_answers`: transformers' question-answering pipeline (the Inference API shape): per window, a
  softmax over the context tokens and [CLS]; score = p(start) * p(end); spans are widened to whole words;
  answers with the same text (any case) add their scores; `handle_impossible_answer` adds "" scored by
  the smallest [CLS] probability over the windows.
- `squad_answer`: the SQuAD evaluation rule (as in transformers' run_qa.py): score = start + end logit,
  n-best over every window, the text cut by token offsets; for SQuAD v2.0 the answer is "" when the null
  score (the [CLS] span) beats the best span by more than `null_threshold`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ServeError
from .runner import BundleRunner, finite

CONTEXT = 1  # sequence id of the context (the question comes first)


class WindowingError(ServeError, ValueError):
    """The question leaves no room for the context (or the stride is too large): exit 2 / HTTP 422."""


@dataclass
class Question:
    """One question with its context and the windows (tokenizers.Encoding) the model reads."""

    question: str
    context: str
    windows: list[Any] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        """Every window's ids end to end: its length is the work this question costs (batch sorting)."""
        return [i for w in self.windows for i in w.ids]


def make_windows(tokenizer, max_length: int, doc_stride: int):
    """A copy of a `tokenizers.Tokenizer` that cuts (question, context) pairs into overlapping windows."""
    from tokenizers import Tokenizer

    if not 0 <= doc_stride < max_length:
        raise WindowingError(
            f"doc_stride must be in [0, max_length), got {doc_stride} (max_length {max_length})"
        )
    windowed = Tokenizer.from_str(tokenizer.to_str())
    windowed.no_padding()
    windowed.enable_truncation(max_length, stride=doc_stride, strategy="only_second", direction="right")
    return windowed


def encode_questions(windowed, questions: Sequence[str], contexts: Sequence[str]) -> list[Question]:
    """Each (question, context) with its windows; `windowed` comes from `make_windows`."""
    out = []
    for i, (q, c) in enumerate(zip(questions, contexts, strict=True)):
        try:
            first = windowed.encode(q, c)
        except Exception as e:  # the Rust side says "Truncation error: ..."
            raise WindowingError(
                f"inputs[{i}]: the question is too long for max_length with this doc_stride "
                f"({str(e).splitlines()[0]})"
            ) from None
        out.append(Question(q, c, [first, *first.overflowing]))
    return out


def context_mask(window) -> np.ndarray:
    """True at the tokens of the context: the only tokens an answer may start or end at."""
    return np.array([s == CONTEXT for s in window.sequence_ids], dtype=bool)


def top_spans(
    start: np.ndarray, end: np.ndarray, allowed: np.ndarray, *, max_answer_length: int, k: int
) -> list[tuple[int, int, float]]:
    """The k best (start, end, start[s] + end[e]) spans with s <= e < s + max_answer_length, both ends
    allowed, best first."""
    idx = np.flatnonzero(allowed)
    if idx.size == 0 or k <= 0:
        return []
    scores = start[idx][:, None].astype(np.float64) + end[idx][None, :]
    gap = idx[None, :] - idx[:, None]
    scores = np.where((gap >= 0) & (gap < max_answer_length), scores, -np.inf)
    flat = scores.ravel()
    k = min(k, int(np.isfinite(flat).sum()))
    if k == 0:
        return []
    best = np.argpartition(-flat, k - 1)[:k]
    best = best[np.argsort(-flat[best], kind="stable")]
    rows, cols = np.divmod(best, idx.size)
    return [(int(idx[r]), int(idx[c]), float(flat[b])) for r, c, b in zip(rows, cols, best, strict=True)]


def log_softmax(x: np.ndarray, support: np.ndarray) -> np.ndarray:
    """log softmax over the `support` positions; -inf elsewhere."""
    x = np.where(support, x.astype(np.float64), -np.inf)
    top = x.max()
    return x - (top + np.log(np.exp(x - top).sum()))


def pipeline_answers(
    q: Question,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    top_k: int = 1,
    max_answer_len: int = 15,
    handle_impossible_answer: bool = False,
    align_to_words: bool = True,
) -> list[dict[str, Any]]:
    """The answers transformers' question-answering pipeline gives for `q`, best first (at most top_k).

    start_logits[w] / end_logits[w] are window w's logits (at least len(window.ids) long)."""
    answers: dict[str, dict[str, Any]] = {}
    null = np.inf
    for window, start, end in zip(q.windows, start_logits, end_logits, strict=True):
        n = len(window.ids)
        allowed = context_mask(window)
        support = allowed | _cls_positions(window)
        ls, le = log_softmax(start[:n], support), log_softmax(end[:n], support)
        null = min(null, float(np.exp(ls[0] + le[0])))
        pre_k = top_k * 2 + 10 if align_to_words else top_k  # word alignment merges some candidates
        for s, e, logp in top_spans(ls, le, allowed, max_answer_length=max_answer_len, k=pre_k):
            lo, hi = _char_span(window, s, e, align_to_words)
            text = q.context[lo:hi]
            key = text.lower()
            if key in answers:
                answers[key]["score"] += float(np.exp(logp))
            else:
                answers[key] = {"score": float(np.exp(logp)), "start": lo, "end": hi, "answer": text}
    ranked = list(answers.values())
    if handle_impossible_answer:
        ranked.append({"score": null, "start": 0, "end": 0, "answer": ""})
    return sorted(ranked, key=lambda a: a["score"], reverse=True)[:top_k]


def _cls_positions(window) -> np.ndarray:
    """The pipeline keeps [CLS] in the softmax: the special token the window starts with, wherever it is."""
    ids = np.asarray(window.ids)
    if not window.special_tokens_mask[0]:
        return np.zeros(len(ids), dtype=bool)
    return ids == ids[0]


def _char_span(window, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    if align_to_words:
        start_word, end_word = window.token_to_word(s), window.token_to_word(e)
        if start_word is not None and end_word is not None:
            lo = window.word_to_chars(start_word, CONTEXT)
            hi = window.word_to_chars(end_word, CONTEXT)
            if lo is not None and hi is not None:
                return lo[0], hi[1]
    return window.offsets[s][0], window.offsets[e][1]


def squad_answer(
    context: str,
    windows: Sequence[tuple[Sequence[tuple[int, int]], np.ndarray]],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_threshold: float = 0.0,
) -> tuple[str, float]:
    """The SQuAD evaluation answer over all windows of one question, and its null-score margin.

    windows[w] = (offsets, allowed): character offsets of window w's tokens and its context mask;
    [CLS] is token 0. Returns (text, null_score - best_span_score); text is "" for no answer (v2.0, or
    when no span fits)."""
    best_text, best_score, null = "", -np.inf, np.inf
    for (offsets, allowed), start, end in zip(windows, start_logits, end_logits, strict=True):
        n = len(offsets)
        null = min(null, float(start[0]) + float(end[0]))
        spans = top_spans(
            start[:n], end[:n], np.asarray(allowed)[:n], max_answer_length=max_answer_length, k=n_best
        )
        if spans and spans[0][2] > best_score:
            s, e, best_score = spans[0]
            best_text = context[offsets[s][0] : offsets[e][1]]
    margin = null - best_score
    if version_2 and margin > null_threshold:
        return "", margin
    return best_text, margin


class QuestionAnswerer(BundleRunner):
    """Question answering over an exported bundle; `predict` returns the pipeline's answers per question."""

    task = "question-answering"
    max_answer_len = 15

    def __init__(self, bundle, *, doc_stride: int | None = None, **kwargs):
        super().__init__(bundle, **kwargs)
        stride = doc_stride if doc_stride is not None else bundle.manifest.get("doc_stride")
        stride = stride if isinstance(stride, int) else min(bundle.max_length // 2, 128)
        self.windowed = make_windows(self.encoder.tokenizer, bundle.max_length, stride)

    def questions(self, questions: Sequence[str], contexts: Sequence[str]) -> list[Question]:
        return encode_questions(self.windowed, questions, contexts)

    def encode(self, pairs: Sequence[tuple[str, str]], *, truncate: bool = True) -> list[Question]:
        """(question, context) pairs -> Questions with their windows (a long context is never cut)."""
        return self.questions([q for q, _ in pairs], [c for _, c in pairs])

    def predict(
        self, questions: Sequence[str], contexts: Sequence[str], **options: Any
    ) -> list[list[dict[str, Any]]]:
        items = self.questions(questions, contexts)
        return self.run(items, [options] * len(items))

    def run(self, items: Sequence[Question], options: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """One model call over every window of every question; each question's answers (best first)."""
        windows = [w for q in items for w in q.windows]
        outputs = self.model.run(self.feeds(windows))
        starts = finite(outputs["start_logits"])
        ends = finite(outputs["end_logits"])
        results, row = [], 0
        for q, opts in zip(items, options, strict=True):
            k = len(q.windows)
            results.append(pipeline_answers(q, starts[row : row + k], ends[row : row + k], **_known(opts)))
            row += k
        return results


def _known(opts: dict[str, Any]) -> dict[str, Any]:
    keys = ("top_k", "max_answer_len", "handle_impossible_answer", "align_to_words")
    return {k: opts[k] for k in keys if opts.get(k) is not None}


# -- the Inference API's request and response shapes -------------------------------------------------------

PARAMETERS = {"top_k": int, "max_answer_len": int, "handle_impossible_answer": bool, "align_to_words": bool}


class QARequestError(ValueError):
    """A request that is not the question-answering shape; the message names the field (HTTP 422)."""


def parse_request(body: Any) -> tuple[list[str], list[str], dict[str, Any], bool]:
    """{"inputs": {"question", "context"} or a list of them, "parameters": {...}} ->
    (questions, contexts, options, single): single when inputs was one object."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise QARequestError('expected a JSON object with "inputs": {"question": ..., "context": ...}')
    inputs = body["inputs"]
    single = isinstance(inputs, dict)
    items = [inputs] if single else inputs
    if not isinstance(items, list) or not items:
        raise QARequestError('"inputs" must be an object {"question", "context"} or a non-empty list of them')
    questions, contexts = [], []
    for i, item in enumerate(items):
        where = "inputs" if single else f"inputs[{i}]"
        if not isinstance(item, dict):
            raise QARequestError(f'{where}: expected an object with "question" and "context"')
        for key, out in (("question", questions), ("context", contexts)):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise QARequestError(f'{where}: "{key}" must be a non-empty string')
            out.append(value)
    return questions, contexts, parse_parameters(body.get("parameters")), single


def parse_parameters(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise QARequestError('"parameters" must be an object')
    out = {}
    for key, value in params.items():
        kind = PARAMETERS.get(key)
        if kind is None:
            raise QARequestError(f'parameters: unknown "{key}" (known: {", ".join(PARAMETERS)})')
        if value is None:
            continue
        if kind is bool and not isinstance(value, bool):
            raise QARequestError(f"parameters.{key}: expected true or false, got {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise QARequestError(f"parameters.{key}: expected a positive integer, got {value!r}")
        out[key] = value
    return out


def response(answers: Sequence[list[dict[str, Any]]], single: bool) -> Any:
    """The pipeline's output shape: a question with one answer gives the answer object, else the list."""
    shaped = [a[0] if len(a) == 1 else a for a in answers]
    return shaped[0] if single else shaped


def record(index: int, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """sft-predict's output line for one question: its best answer ("" with score 0 when none)."""
    best = answers[0] if answers else {"answer": "", "score": 0.0, "start": 0, "end": 0}
    return {"index": index, **best}
