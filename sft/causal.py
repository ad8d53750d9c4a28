"""Causal-LM instruction tuning: read Alpaca / chat records, render prompt + response, mask the prompt, pack.

Labels are aligned with input_ids (the model shifts them); -100 marks positions without a target. Only the
final assistant reply is trained on: the prompt, system text and earlier turns are context.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

IGNORE = -100
ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    messages: list[dict[str, str]]  # ends with the assistant reply the loss is on
    where: str
    instruction: str | None = None  # Alpaca fields, kept for the template-less rendering
    input: str = ""


def read_instructions(path: str | Path) -> list[Record]:
    """Alpaca {instruction, input, output} or chat {"messages": [...]} records from JSON, JSONL (or Parquet).

    Records whose reply is empty (28 of Alpaca's 52,002) teach nothing: they are skipped and counted."""
    from .data import read_table

    table = read_table(str(path))
    records, empty = [], 0
    for row, where in zip(table.rows, table.where, strict=False):
        record = _chat(row, where) if "messages" in row else _alpaca(row, where)
        if record is None:
            empty += 1
        else:
            records.append(record)
    if not records:
        raise InputError(f"{path}: no record has a non-empty response")
    if empty:
        print(
            f"note: {path}: skipped {empty} of {len(table.rows)} records with an empty response",
            file=sys.stderr,
        )
    return records


def _alpaca(row: dict[str, Any], where: str) -> Record | None:
    if "instruction" not in row or "output" not in row:
        raise InputError(
            f"{where}: expected fields 'instruction' and 'output' (Alpaca) or 'messages' "
            f"(chat), found {', '.join(map(str, row)) or 'none'}"
        )
    instruction, extra, output = (_string(row, k, where) for k in ("instruction", "input", "output"))
    if not instruction.strip():
        raise InputError(f"{where}: field 'instruction' is empty")
    if not output.strip():
        return None
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Record(messages, where, instruction, extra if extra.strip() else "")


def _string(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{where}: field {key!r} must be a string, found {type(value).__name__}")
    return value


def _chat(row: dict[str, Any], where: str) -> Record | None:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            found = m.get("role") if isinstance(m, dict) else type(m).__name__
            raise InputError(f"{where}: messages[{i}].role is {found!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise InputError(
                f"{where}: messages[{i}].content must be a string, found {type(m.get('content')).__name__}"
            )
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[-1]["role"] != "assistant":
        raise InputError(
            f"{where}: the last message must be the assistant's reply, found role {clean[-1]['role']!r}"
        )
    if not any(m["role"] == "user" for m in clean):
        raise InputError(f"{where}: field 'messages' has no user message")
    if not clean[-1]["content"].strip():
        return None
    return Record(clean, where)


def render(tokenizer, record: Record) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids): the tokenizer's chat template when it has one, else an Alpaca prompt."""
    ((prompt_text, response_text, bos, eos),) = _texts(tokenizer, [record])
    prompt = tokenizer.encode(prompt_text, add_special_tokens=False)
    response = tokenizer.encode(response_text, add_special_tokens=False)
    return bos + prompt, response + ([] if eos in response else [eos])


def _texts(tokenizer, records: list[Record]) -> list[tuple[str, str, list[int], int]]:
    """Per record: prompt text, response text, the ids to put before the prompt, and the EOS id."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError(
            f"{tokenizer.name_or_path}: the tokenizer has no EOS token, so replies cannot be ended"
        )
    if getattr(tokenizer, "chat_template", None):
        return [(*_split_chat(tokenizer, r), [], eos) for r in records]
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return [(_alpaca_prompt(r), r.messages[-1]["content"], bos, eos) for r in records]


def _split_chat(tokenizer, record: Record) -> tuple[str, str]:
    from jinja2.exceptions import TemplateError

    try:
        prompt = tokenizer.apply_chat_template(
            record.messages[:-1], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(record.messages, tokenize=False)
    except TemplateError as e:
        raise InputError(
            f"{record.where}: the tokenizer's chat template rejects this conversation ({e})"
        ) from None
    if not full.startswith(prompt):
        raise InputError(
            f"{record.where}: the chat template renders the conversation with the reply "
            f"differently from the prompt alone, so the reply cannot be separated for the loss"
        )
    return prompt, full[len(prompt) :]


def _alpaca_prompt(record: Record) -> str:
    if record.instruction is not None:
        text = f"### Instruction:\n{record.instruction}\n\n"
        if record.input:
            text += f"### Input:\n{record.input}\n\n"
        return text + "### Response:\n"
    headers = {"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"}
    turns = "".join(f"{headers[m['role']]}{m['content']}\n\n" for m in record.messages[:-1])
    return turns + "### Response:\n"


def encode_records(tokenizer, records: list[Record], max_length: int) -> list[dict[str, list[int]]]:
    """input_ids and labels (prompt -100, reply kept) of at most max_length tokens per record.

    Too long: the prompt loses tokens from the left while the whole reply fits (one prompt token is kept so
    the reply's first token has something to be predicted from); otherwise the reply is cut on the right.
    Records with no reply token left are dropped and counted."""
    texts = _texts(tokenizer, records)
    prompts = tokenizer([t[0] for t in texts], add_special_tokens=False)["input_ids"] if texts else []
    replies = tokenizer([t[1] for t in texts], add_special_tokens=False)["input_ids"] if texts else []
    features, cut, dropped = [], 0, 0
    for (_, _, bos, eos), prompt, reply in zip(texts, prompts, replies, strict=False):
        prompt, reply = bos + prompt, reply + ([] if eos in reply else [eos])
        fitted = _fit(prompt, reply, max_length)
        if fitted is None:
            dropped += 1
            continue
        cut += fitted != (prompt, reply)
        prompt, reply = fitted
        features.append({"input_ids": prompt + reply, "labels": [IGNORE] * len(prompt) + reply})
    if cut or dropped:
        print(
            f"note: {cut} of {len(records)} records were truncated to max_length={max_length}; "
            f"{dropped} dropped (their prompt leaves no room for a reply token)",
            file=sys.stderr,
        )
    return features


def _fit(prompt: list[int], reply: list[int], max_length: int) -> tuple[list[int], list[int]] | None:
    if len(prompt) + len(reply) <= max_length:
        return prompt, reply
    if len(reply) < max_length:
        return prompt[len(prompt) + len(reply) - max_length :], reply
    if len(prompt) < max_length:
        return prompt, reply[: max_length - len(prompt)]
    return None


def pack(features: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Greedy first-fit of whole sequences into rows of at most max_length tokens, in the given order.

    Each row carries position_ids restarting at 0 per sequence and seq_lens (for cu_seqlens). The label at
    each sequence's first position is -100, so no target is ever predicted from the previous sequence."""
    bins = _FirstFit(len(features), max_length)
    rows: list[dict[str, list[int]]] = []
    for f in features:
        n = len(f["input_ids"])
        if not 0 < n <= max_length:
            raise ValueError(f"cannot pack a sequence of {n} tokens into rows of {max_length}")
        i = bins.place(n)
        if i == len(rows):
            rows.append({"input_ids": [], "labels": [], "position_ids": [], "seq_lens": []})
        row = rows[i]
        row["input_ids"] += f["input_ids"]
        row["labels"] += [IGNORE] + f["labels"][1:]
        row["position_ids"] += range(n)
        row["seq_lens"].append(n)
    return rows


class _FirstFit:
    """The leftmost bin with room for `need`, in O(log n): a max segment tree over the bins' free space.

    There are as many bins as sequences, all empty at first, so an unused bin is always the next new row."""

    def __init__(self, bins: int, capacity: int):
        self.size = 1 << max(1, (bins - 1).bit_length())
        self.free = [capacity] * (2 * self.size)

    def place(self, need: int) -> int:
        i = 1
        while i < self.size:
            i = 2 * i if self.free[2 * i] >= need else 2 * i + 1
        self.free[i] -= need
        leaf = i - self.size
        while i > 1:
            i //= 2
            self.free[i] = max(self.free[2 * i], self.free[2 * i + 1])
        return leaf


def cu_seqlens_from_position_ids(position_ids) -> torch.Tensor:
    """Cumulative sequence starts over the flattened batch ([0, len1, len1+len2, ..., total]), int32."""
    pos = torch.as_tensor(position_ids).flatten()
    if pos.numel() and int(pos[0]) != 0:
        raise ValueError("position_ids must start at 0")
    starts = torch.nonzero(pos == 0).flatten()
    total = torch.tensor([pos.numel()], device=pos.device)
    return torch.cat([starts, total]).to(torch.int32)


def collate_causal(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids, attention_mask, labels (-100 on padding), position_ids.

    Padding positions continue the row's last sequence (n, n+1, ...): padding never opens a new sequence."""
    width = max(len(r["input_ids"]) for r in rows)
    keys = ("input_ids", "attention_mask", "labels", "position_ids")
    out: dict[str, list[list[int]]] = {k: [] for k in keys}
    for r in rows:
        n, pad = len(r["input_ids"]), width - len(r["input_ids"])
        positions = list(r["position_ids"]) if "position_ids" in r else list(range(n))
        out["input_ids"].append(list(r["input_ids"]) + [pad_id] * pad)
        out["attention_mask"].append([1] * n + [0] * pad)
        out["labels"].append(list(r["labels"]) + [IGNORE] * pad)
        out["position_ids"].append(positions + list(range(positions[-1] + 1, positions[-1] + 1 + pad)))
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy); inf when that overflows."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return float("inf")
