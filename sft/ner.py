"""Token classification (NER): CoNLL / JSONL reading, IOB1 -> IOB2, sub-word label alignment, entity metrics.

Tags are kept in IOB2 (every entity starts with B-). Files whose tags are not IOB at all (e.g. POS tags)
are read as plain tags and left untouched. Entity metrics follow seqeval's default (conlleval) mode.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

SCHEMES = ("auto", "iob1", "iob2")
IGNORE = -100


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    where: str  # "train.txt line 12": the sentence's first line


def read_token_data(path: str | Path, **kw) -> list[Sentence]:
    """JSONL/JSON by suffix, anything else as a CoNLL column file."""
    if Path(path).suffix.lower() in (".jsonl", ".json"):
        return read_token_jsonl(path, **kw)
    return read_conll(path, **kw)


def read_conll(path: str | Path, scheme: str = "auto") -> list[Sentence]:
    """Whitespace-separated columns, token first and tag last, a blank line between sentences."""
    path = Path(path)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = columns = 0
    for n, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append(Sentence(tokens, tags, f"{path} line {start}"))
            tokens, tags = [], []
            continue
        columns = columns or len(fields)
        if len(fields) < 2 or len(fields) != columns:
            expected = columns if columns >= 2 else "at least 2"
            raise InputError(
                f"{path} line {n}: expected {expected} columns (token ... tag), found {len(fields)}"
            )
        if not tokens:
            start = n
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append(Sentence(tokens, tags, f"{path} line {start}"))
    return _finish(sentences, scheme, path, token_lines=True)


def read_token_jsonl(
    path: str | Path,
    tokens_field: str = "tokens",
    tags_field: str = "tags",
    id2label: dict[int, str] | Sequence[str] | None = None,
    scheme: str = "auto",
) -> list[Sentence]:
    """One {"tokens": [...], "tags": [...]} object per line; tags are strings, or ids mapped by id2label."""
    from .data import read_table

    names = dict(enumerate(id2label)) if isinstance(id2label, (list, tuple)) else id2label
    table = read_table(str(path))
    sentences = []
    for row, where in zip(table.rows, table.where, strict=False):
        tokens, tags = row.get(tokens_field), row.get(tags_field)
        for field, value in ((tokens_field, tokens), (tags_field, tags)):
            if not isinstance(value, list) or not value:
                found = "nothing" if value is None else repr(value)[:40]
                raise InputError(f"{where}: field {field!r} must be a non-empty list, found {found}")
        if len(tokens) != len(tags):
            raise InputError(f"{where}: {len(tokens)} {tokens_field!r} but {len(tags)} {tags_field!r}")
        for i, token in enumerate(tokens):
            if not isinstance(token, str) or not token.strip():
                raise InputError(
                    f"{where}: {tokens_field!r} item {i + 1} is {token!r}, expected a non-blank string"
                )
        names_of_tags = [_tag_name(t, i, names, where, tags_field) for i, t in enumerate(tags)]
        sentences.append(Sentence(tokens, names_of_tags, where))
    return _finish(sentences, scheme, path, token_lines=False)


def _tag_name(tag: Any, i: int, names: dict[int, str] | None, where: str, field: str) -> str:
    if isinstance(tag, str) and tag.strip():
        return tag.strip()
    if isinstance(tag, int) and not isinstance(tag, bool):
        if names is None:
            return str(tag)
        if tag in names:
            return names[tag]
        if str(tag) in names:  # id2label read from a JSON config has string keys
            return names[str(tag)]
        raise InputError(f"{where}: {field!r} item {i + 1} is id {tag}, which id2label does not name")
    raise InputError(f"{where}: {field!r} item {i + 1} is {tag!r}, expected a tag name or an integer id")


def _lines(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _finish(sentences: list[Sentence], scheme: str, path: Path, *, token_lines: bool) -> list[Sentence]:
    """Check the tags against the scheme and return the sentences in IOB2."""
    if scheme not in SCHEMES:
        raise InputError(f"tag scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if not sentences:
        raise InputError(f"{path}: no sentences")
    if not any(_is_iob(t) and t != "O" for s in sentences for t in s.tags) and scheme == "auto":
        return sentences  # plain tags (POS, chunk classes): nothing to convert
    for s in sentences:
        for i, tag in enumerate(s.tags):
            if not _is_iob(tag):
                raise InputError(f"{_place(s, i, token_lines)}: tag {tag!r} is not O, B-TYPE or I-TYPE")
            if scheme == "iob2" and _starts_with_inside(s.tags, i):
                raise InputError(
                    f"{_place(s, i, token_lines)}: tag {tag!r} starts an entity, which IOB2 "
                    f"does not allow (the file looks like IOB1: use scheme 'auto' or 'iob1')"
                )
        s.tags = to_iob2(s.tags)
    return sentences


def _place(s: Sentence, i: int, token_lines: bool) -> str:
    if token_lines:  # CoNLL: one token per line, so token i sits i lines below the sentence start
        file, _, line = s.where.rpartition(" line ")
        return f"{file} line {int(line) + i}"
    return f"{s.where} token {i + 1} ({s.tokens[i]!r})"


def _is_iob(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def _starts_with_inside(tags: Sequence[str], i: int) -> bool:
    """An I-X that opens an entity: at the start, after O, or after a tag of another type."""
    return tags[i].startswith("I-") and (i == 0 or tags[i - 1] == "O" or tags[i - 1][2:] != tags[i][2:])


def detect_scheme(sentences: list[Sentence]) -> str:
    """'iob1' when some entity starts with I- (the raw CoNLL-2003 files), else 'iob2'."""
    inside_start = any(_starts_with_inside(s.tags, i) for s in sentences for i in range(len(s.tags)))
    return "iob1" if inside_start else "iob2"


def to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 -> IOB2: an I-X that opens an entity becomes B-X. IOB2 input comes back unchanged."""
    return ["B-" + t[2:] if _starts_with_inside(tags, i) else t for i, t in enumerate(tags)]


def label_list(sentences: list[Sentence]) -> list[str]:
    """The tag set: "O" first, then by entity type with B- before I- (plain tags: alphabetical)."""
    tags = {t for s in sentences for t in s.tags}

    def key(tag: str):
        if tag == "O":
            return (0, "", "")
        return (1, tag[2:], tag[:2]) if _is_iob(tag) else (1, tag, "")

    return sorted(tags, key=key)


def encode_sentences(
    tokenizer, sentences: list[Sentence], label2id: dict[str, int], max_length: int
) -> list[dict[str, list[int]]]:
    """Tokenize words into sub-words; a word's tag goes on its first sub-token, -100 everywhere else."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"{tokenizer.name_or_path}: token classification needs a fast tokenizer (tokenizer.json)"
        )
    tag_ids = []
    for s in sentences:
        for i, tag in enumerate(s.tags):
            if tag not in label2id:
                known = ", ".join(label2id)
                raise InputError(
                    f"{s.where}: tag {tag!r} of token {i + 1} ({s.tokens[i]!r}) is not one of "
                    f"the training tags ({known})"
                )
        tag_ids.append([label2id[t] for t in s.tags])
    if not sentences:
        return []
    enc = tokenizer(
        [s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features, cut = [], 0
    for n, ids in enumerate(tag_ids):
        labels, previous = [], None
        for word in enc.word_ids(n):
            labels.append(ids[word] if word is not None and word != previous else IGNORE)
            previous = word
        kept = sum(1 for label in labels if label != IGNORE)
        cut += kept < len(ids)
        features.append({**{k: enc[k][n] for k in keys}, "labels": labels})
    if cut:
        print(
            f"note: {cut} of {len(sentences)} sentences lost words to max_length={max_length} "
            f"(or to words the tokenizer maps to nothing); those words are not trained or scored",
            file=sys.stderr,
        )
    return features


def decode_predictions(pred_ids, labels, id2label) -> list[list[str]]:
    """Word-level tags from sub-token predictions: keep the positions whose label is not -100."""
    rows = []
    for pred_row, label_row in zip(_as_lists(pred_ids), _as_lists(labels), strict=False):
        rows.append([_name(id2label, p) for p, y in zip(pred_row, label_row, strict=False) if y != IGNORE])
    return rows


def _as_lists(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else x


def _name(id2label, i: int) -> str:
    if isinstance(id2label, dict) and i not in id2label:
        return id2label[str(i)]
    return id2label[i]


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities as (type, start, end) with end exclusive, read as conlleval does.

    An entity starts at B-X, or at I-X after O or a different type; it ends before the next tag that is
    not I-X of the same type. Non-IOB tags count as outside."""
    spans = []
    current: list | None = None
    for i, tag in enumerate(tags):
        inside = _is_iob(tag) and tag != "O"
        if current is not None and not (tag.startswith("I-") and tag[2:] == current[0]):
            spans.append((current[0], current[1], i))
            current = None
        if inside and current is None:
            current = [tag[2:], i]
    if current is not None:
        spans.append((current[0], current[1], len(tags)))
    return spans


def entity_report(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro precision / recall / F1 over exact entity matches, the same per type, and token accuracy."""
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"{len(true_seqs)} true sequences but {len(pred_seqs)} predicted")
    true, pred = set(), set()
    correct_tokens = total_tokens = 0
    for n, (t, p) in enumerate(zip(true_seqs, pred_seqs, strict=False)):
        if len(t) != len(p):
            raise ValueError(f"sequence {n}: {len(t)} true tags but {len(p)} predicted")
        true.update((n, *span) for span in entity_spans(t))
        pred.update((n, *span) for span in entity_spans(p))
        correct_tokens += sum(a == b for a, b in zip(t, p, strict=False))
        total_tokens += len(t)
    hits = true & pred
    true_n, pred_n, hit_n = (Counter(span[1] for span in spans) for spans in (true, pred, hits))
    per_type = {
        kind: {**_prf(hit_n[kind], pred_n[kind], true_n[kind]), "support": true_n[kind]}
        for kind in sorted(set(true_n) | set(pred_n))
    }
    return {
        **_prf(len(hits), len(pred), len(true)),
        "accuracy": correct_tokens / total_tokens if total_tokens else 0.0,
        "num_entities": len(true),
        "num_predicted": len(pred),
        "per_type": per_type,
    }


def _prf(hits: int, predicted: int, actual: int) -> dict[str, float]:
    precision = hits / predicted if predicted else 0.0
    recall = hits / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
