"""ONNX vs PyTorch on real inputs: the largest absolute and relative difference of every output.

Optimum's own validation only warns; here an output over --atol fails the export. The relative
difference is max |ONNX - PyTorch| / max |PyTorch| over the compared elements (padding excluded), so it
stays meaningful where single values sit near zero.

- text-classification: the variant runs through serve's TextClassifier (serve's tokenizer path too).
- token-classification: logits at every real token.
- text-generation-with-past: a prefill with an empty past (logits and every present.*), then one decoding
  step that feeds each side its own cache back, so the past inputs are checked as well.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sft.errors import InputError

from .runners import GENERATION_TASK, OrtSession, TorchModel, present_to_past

BATCH = 8
SAMPLE_SIZE = 32
# Varied length and content, used with the generated texts when no eval file is given.
VALIDATION_TEXTS = [
    "ok",
    "The package arrived two days late and the box was damaged.",
    "I was charged twice this month, please refund one of the payments!",
    "After the last update the app crashes whenever I open the settings screen on my phone.",
    "Great service, thanks a lot.",
    "Why?",
    "Numbers 12345 and symbols #@! mixed with UPPER and lower case words, plus émojis 🙂 and accents.",
    " ".join(["a long input that must be truncated at the bundle's maximum length"] * 40),
]


class ValidationError(InputError):
    """The exported model disagrees with PyTorch beyond the tolerance, or loses too much accuracy."""

    exit_code = 1


@dataclass
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float

    def as_dict(self) -> dict[str, float]:
        return {"max_abs_diff": self.max_abs, "max_rel_diff": self.max_rel}


def output_diff(name: str, got: np.ndarray, ref: np.ndarray) -> OutputDiff:
    if got.shape != ref.shape:
        raise ValidationError(f"ONNX output {name!r} has shape {got.shape}, PyTorch's {ref.shape}")
    if got.size == 0:
        return OutputDiff(name, 0.0, 0.0)
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    max_abs = float(np.max(np.abs(got - ref)))  # NaN propagates, and NaN fails every tolerance
    scale = float(np.max(np.abs(ref)))
    return OutputDiff(
        name, max_abs, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    )


def worst_per_output(diffs: Sequence[OutputDiff]) -> list[OutputDiff]:
    """One entry per output name (the largest differences over batches and steps), in first-seen order."""
    out: dict[str, OutputDiff] = {}
    for d in diffs:
        old = out.get(d.name)
        if old is None or np.isnan(d.max_abs) or d.max_abs > old.max_abs:
            out[d.name] = OutputDiff(d.name, d.max_abs, max(d.max_rel, old.max_rel) if old else d.max_rel)
        else:
            old.max_rel = max(old.max_rel, d.max_rel)
    return list(out.values())


def check_tolerance(diffs: Sequence[OutputDiff], atol: float, what: str, num_texts: int) -> None:
    worst = max(diffs, key=lambda d: np.inf if np.isnan(d.max_abs) else d.max_abs)
    if not worst.max_abs <= atol:  # NaN fails too
        raise ValidationError(
            f"{what}: ONNX and PyTorch differ by {worst.max_abs:.3g} on output {worst.name!r} "
            f"> --atol {atol:g} on {num_texts} texts; no bundle written"
        )


def validation_texts(tokenizer_file: Path, eval_texts: Sequence[str] | None, max_length: int) -> list[str]:
    """A fixed-seed sample of the eval texts when given, else fixed texts plus random-vocabulary ones."""
    if eval_texts:
        texts = list(eval_texts)
        return random.Random(0).sample(texts, min(SAMPLE_SIZE, len(texts)))
    return VALIDATION_TEXTS + generated_texts(tokenizer_file, max_length)


def generated_texts(tokenizer_file: Path, max_length: int, count: int = 8) -> list[str]:
    """Decoded runs of random non-special tokens, from one token to past max_length."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    ids = sorted(i for tok, i in tokenizer.get_vocab().items() if tok not in special)
    rng = random.Random(0)
    lengths = [1 + (max_length + 8) * k // (count - 1) for k in range(count)]
    return [tokenizer.decode([rng.choice(ids) for _ in range(n)]) or "empty" for n in lengths]


def compare(task: str, reference: TorchModel, variant: Path, texts: Sequence[str]) -> list[OutputDiff]:
    """Differences between the ONNX model of a variant directory (a bundle-like dir) and the reference."""
    batches = [list(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
    if task == "text-classification":
        from serve.runtime import TextClassifier

        classifier = TextClassifier.from_bundle(variant, verify=False)
        diffs = [
            output_diff("logits", classifier.logits(b), reference.logits(reference.encode(b)[0]))
            for b in batches
        ]
    else:
        session = OrtSession(variant / "model.onnx")
        step = _compare_generation if task == GENERATION_TASK else _compare_tokens
        diffs = [d for b in batches for d in step(reference, session, b)]
    return worst_per_output(diffs)


def _compare_tokens(reference: TorchModel, session: OrtSession, texts: list[str]) -> list[OutputDiff]:
    feeds, _ = reference.encode(texts)
    real = feeds["attention_mask"].astype(bool)
    return [output_diff(session.output_names[0], session.logits(feeds)[real], reference.logits(feeds)[real])]


def _compare_generation(reference: TorchModel, session: OrtSession, texts: list[str]) -> list[OutputDiff]:
    feeds, _ = reference.encode(texts)
    mask = feeds["attention_mask"]
    ort_out = session.run(feeds)
    torch_out = reference.forward(feeds)
    diffs = _step_diffs(ort_out, torch_out, mask)

    # One decoding step: the greedy next token after each row's last real token, at position len(row).
    lengths = mask.sum(axis=1)
    last = torch_out.logits.float().numpy()[np.arange(len(texts)), lengths - 1]
    step_mask = np.concatenate([mask, np.ones((len(texts), 1), dtype=np.int64)], axis=1)
    step = {
        "input_ids": last.argmax(-1)[:, None].astype(np.int64),
        "attention_mask": step_mask,
        "position_ids": lengths[:, None].astype(np.int64),
    }
    ort_step = session.run(step, past=present_to_past(ort_out))
    torch_step = reference.forward(step, past=torch_out.past_key_values)
    return diffs + _step_diffs(ort_step, torch_step, step_mask, last_only=True)


def _step_diffs(ort_out: dict[str, np.ndarray], torch_out, mask: np.ndarray, last_only: bool = False):
    real = mask.astype(bool)
    logits_mask = real[:, -1:] if last_only else real
    diffs = [
        output_diff("logits", ort_out["logits"][logits_mask], torch_out.logits.float().numpy()[logits_mask])
    ]
    cache = torch_out.past_key_values
    for layer in range(len(cache)):
        for kind, ref in zip(("key", "value"), cache[layer], strict=False):
            name = f"present.{layer}.{kind}"
            # (batch, heads, seq, head_dim): compare the real sequence positions only
            got = np.moveaxis(ort_out[name], 2, 1)[real]
            diffs.append(output_diff(name, got, np.moveaxis(ref.float().numpy(), 2, 1)[real]))
    return diffs
