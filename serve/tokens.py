"""Token classification: per-token labels, aggregated into entity spans with character offsets.

Aggregation follows transformers' token-classification pipeline: "none" (every token), "simple"
(adjacent tokens of one entity type, B-/I- aware), and the word-level "first", "average" and "max".
Words come from the tokenizer's word ids; `word` is the slice of the input text the span covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .runner import BundleRunner, finite

AGGREGATIONS = ("none", "simple", "first", "average", "max")


class TokenClassifier(BundleRunner):
    task = "token-classification"

    def predict(
        self,
        texts: Sequence[str],
        *,
        aggregation_strategy: str = "simple",
        ignore_labels: Sequence[str] = ("O",),
    ) -> list[list[dict[str, Any]]]:
        encodings = self.encode(texts)
        options = [
            {"text": t, "aggregation_strategy": aggregation_strategy, "ignore_labels": ignore_labels}
            for t in texts
        ]
        return self.run(encodings, options)

    def run(self, encodings: Sequence[Any], options: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        logits = finite(self.model.run(self.feeds(encodings))[self.model.output_names[0]])
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        return [
            self._entities(e, p[: len(e.ids)], o) for e, p, o in zip(encodings, probs, options, strict=False)
        ]

    def _entities(self, encoding, probs: np.ndarray, opts: dict[str, Any]) -> list[dict[str, Any]]:
        text = opts["text"]
        strategy = opts.get("aggregation_strategy") or "simple"
        ignore = set(opts.get("ignore_labels", ("O",)))
        tokens = []
        previous_word = None
        for i, (special, (start, end), word) in enumerate(
            zip(encoding.special_tokens_mask, encoding.offsets, encoding.word_ids, strict=False)
        ):
            if special:
                previous_word = None
                continue
            tokens.append(
                {
                    "index": i,
                    "scores": probs[i],
                    "start": start,
                    "end": end,
                    "is_subword": word is not None and word == previous_word,
                }
            )
            previous_word = word
        if strategy in ("none", "simple"):
            entities = [self._labelled(t["scores"], t) for t in tokens]
        else:
            entities = [self._word(group, strategy) for group in _words(tokens)]
        for e in entities:
            e["word"] = text[e["start"] : e["end"]]
        if strategy != "none":
            entities = [self._group(g, text) for g in _groups(entities)]
        key = "entity" if strategy == "none" else "entity_group"
        return [e for e in entities if e[key] not in ignore]

    def _labelled(self, scores: np.ndarray, token: dict[str, Any]) -> dict[str, Any]:
        best = int(scores.argmax())
        return {
            "entity": self.labels[best],
            "score": float(scores[best]),
            "index": token["index"],
            "start": token["start"],
            "end": token["end"],
        }

    def _word(self, tokens: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.mean([t["scores"] for t in tokens], axis=0)
        best = int(scores.argmax())
        return {
            "entity": self.labels[best],
            "score": float(scores[best]),
            "start": tokens[0]["start"],
            "end": tokens[-1]["end"],
        }

    @staticmethod
    def _group(entities: list[dict[str, Any]], text: str) -> dict[str, Any]:
        start, end = entities[0]["start"], entities[-1]["end"]
        return {
            "entity_group": _tag(entities[0]["entity"])[1],
            "score": float(np.mean([e["score"] for e in entities])),
            "word": text[start:end],
            "start": start,
            "end": end,
        }


def _words(tokens: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    words: list[list[dict[str, Any]]] = []
    for t in tokens:
        if words and t["is_subword"]:
            words[-1].append(t)
        else:
            words.append([t])
    return words


def _groups(entities: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Adjacent entities of one type; a B- tag always starts a new group."""
    groups: list[list[dict[str, Any]]] = []
    for e in entities:
        bi, tag = _tag(e["entity"])
        if groups and bi != "B" and _tag(groups[-1][-1]["entity"])[1] == tag:
            groups[-1].append(e)
        else:
            groups.append([e])
    return groups


def _tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label
