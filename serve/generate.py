"""Text generation with a causal-LM bundle whose graph takes and returns past key/values.

Prompts of one batch are left-padded; each step feeds only the newest token and the cache returned by
the step before (kept on the device through IOBinding on CUDA). Greedy decoding, or sampling with
temperature / top-k / top-p from a per-request seeded generator; a request stops at the EOS token, at
one of its stop strings, or after its max_new_tokens (itself capped by the server).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bundle import GENERATION_TASK, Bundle
from .errors import ServeError
from .runner import BundleRunner

DEFAULT_NEW_TOKENS = 20


@dataclass
class GenerationParams:
    max_new_tokens: int = DEFAULT_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def sampling(self) -> bool:
        # As in text-generation-inference: any sampling parameter turns sampling on.
        return self.do_sample or self.temperature != 1.0 or self.top_p < 1.0 or self.top_k > 0


class TextGenerator(BundleRunner):
    task = GENERATION_TASK

    def __init__(
        self, bundle: Bundle, *, max_new_tokens_cap: int = 256, io_binding: bool | None = True, **kwargs
    ):
        gen = bundle.generation
        self.eos_token_id = gen["eos_token_id"]
        pad = gen.get("pad_token_id")
        super().__init__(
            bundle,
            truncate_left=True,
            pad_id=pad if pad is not None else self.eos_token_id,
            io_binding=io_binding,
            **kwargs,
        )
        self.max_new_tokens_cap = max_new_tokens_cap
        added = self.encoder.tokenizer.get_added_tokens_decoder()
        self.special_ids = {i for i, t in added.items() if t.special}
        self.kv_shape = (gen["num_key_value_heads"], gen["head_dim"])
        layers = range(gen["num_layers"])
        self.past_names = [f"past_key_values.{i}.{kv}" for i in layers for kv in ("key", "value")]
        self.present_names = [f"present.{i}.{kv}" for i in layers for kv in ("key", "value")]
        missing = [n for n in self.past_names + ["input_ids"] if n not in self.input_names]
        missing += [n for n in self.present_names + ["logits"] if n not in self.model.output_names]
        if missing:
            raise ServeError(
                f"{bundle.model_file}: not a decoder with past key/values as manifest.json says "
                f"(graph lacks {', '.join(missing[:3])})"
            )

    def generate(
        self, prompts: Sequence[str], params: GenerationParams | None = None
    ) -> list[dict[str, Any]]:
        params = params or GenerationParams()
        return self.run(self.encode(prompts), [{"params": params}] * len(prompts))

    def run(self, encodings: Sequence[Any], options: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        params: list[GenerationParams] = [o["params"] for o in options]
        limits = [min(p.max_new_tokens, self.max_new_tokens_cap) for p in params]
        rngs = [np.random.default_rng(p.seed) for p in params]
        rows = len(encodings)
        padded = self.encoder.pad(encodings, left=True)
        ids, mask = padded["input_ids"], padded["attention_mask"]
        positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
        heads, head_dim = self.kv_shape
        past: dict[str, Any] = {n: self.model.empty((rows, heads, 0, head_dim), n) for n in self.past_names}
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        reasons: list[str | None] = [None if limits[r] > 0 else "length" for r in range(rows)]
        while not all(reasons):
            feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
            out = self.model.run(
                {k: v for k, v in feeds.items() if k in self.input_names}, keep_on_device=self.present_names
            )
            last = out["logits"][:, -1, :].astype(np.float64)
            next_ids = np.full((rows, 1), self.encoder.pad_id, dtype=np.int64)
            for r in range(rows):
                if reasons[r]:
                    continue
                token, logprob = _choose(last[r], params[r], rngs[r])
                tokens[r].append(token)
                logprobs[r].append(logprob)
                next_ids[r, 0] = token
                reasons[r] = self._finished(tokens[r], limits[r], params[r].stop)
            ids = next_ids
            mask = np.concatenate([mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            past = {p: out[q] for p, q in zip(self.past_names, self.present_names, strict=False)}
        return [
            self._result(t, lp, reason, p)
            for t, lp, reason, p in zip(tokens, logprobs, reasons, params, strict=False)
        ]

    def _finished(self, tokens: list[int], limit: int, stop: list[str]) -> str | None:
        if tokens[-1] == self.eos_token_id:
            return "eos_token"
        if stop and any(s in self.encoder.decode(tokens) for s in stop):
            return "stop_sequence"
        return "length" if len(tokens) >= limit else None

    def _result(
        self, tokens: list[int], logprobs: list[float], reason: str | None, params: GenerationParams
    ) -> dict[str, Any]:
        return {
            "generated_text": self.encoder.decode(tokens),
            "token_ids": tokens,
            "details": {
                "finish_reason": reason,
                "generated_tokens": len(tokens),
                "seed": params.seed,
                "prefill": [],
                "tokens": [
                    {
                        "id": t,
                        "text": self.encoder.decode([t], skip_special_tokens=False),
                        "logprob": lp,
                        "special": t in self.special_ids,
                    }
                    for t, lp in zip(tokens, logprobs, strict=False)
                ],
            },
        }


def _choose(logits: np.ndarray, params: GenerationParams, rng: np.random.Generator) -> tuple[int, float]:
    """The next token and its log-probability under the model's distribution."""
    shifted = logits - logits.max()
    logprob_all = shifted - np.log(np.exp(shifted).sum())
    if not params.sampling:
        token = int(logits.argmax())
        return token, float(logprob_all[token])
    scaled = shifted / params.temperature  # shifted first: a tiny temperature gives -inf, never inf - inf
    candidates = np.arange(scaled.size)
    if 0 < params.top_k < scaled.size:
        candidates = np.argpartition(-scaled, params.top_k - 1)[: params.top_k]
    order = candidates[np.argsort(-scaled[candidates], kind="stable")]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if params.top_p < 1.0:
        keep = (np.cumsum(probs) - probs) < params.top_p  # the smallest prefix holding top_p of the mass
        order, probs = order[keep], probs[keep] / probs[keep].sum()
    token = int(order[rng.choice(order.size, p=probs)])
    return token, float(logprob_all[token])
