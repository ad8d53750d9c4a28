"""Text-to-text generation with a seq2seq bundle (sft-export's text2text-generation-with-past): numpy only.

The encoder runs once; the decoder's first step (decoder_model.onnx) returns the cache, every later step
feeds only the newest token and that cache to decoder_with_past_model.onnx. Greedy search, beam search (a
port of transformers' beam search: same candidates, length penalty and stopping, so the same tokens) and
sampling (temperature / top-k / top-p, serve.generate's sampler). The bundle's generation_config.json
gives the defaults and the logits rules transformers applies: forced BOS/EOS, min_length, bad words
(single tokens), no_repeat_ngram_size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ServeError
from .generate import GenerationParams, _choose

SEQ2SEQ_TASK = "text2text-generation-with-past"
NEG = np.float32(-1.0e9)  # transformers' "impossible" score in beam search


@dataclass
class Seq2SeqParams(GenerationParams):
    num_beams: int = 1
    length_penalty: float | None = None  # None: the bundle's generation_config.json (else 1.0)
    early_stopping: bool | str | None = None


class Seq2SeqGenerator:
    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        threads: int | None = None,
        max_new_tokens_cap: int = 256,
        verify=True,
    ):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from .bundle import sha256_file
        from .session import choose_providers, usable_cores

        self.dir = Path(bundle_dir)
        try:
            self.manifest = json.loads((self.dir / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ServeError(f"{self.dir}/manifest.json: cannot read it ({e})") from None
        if self.manifest.get("task") != SEQ2SEQ_TASK:
            raise ServeError(f"{self.dir}: a {self.manifest.get('task')} bundle, not {SEQ2SEQ_TASK}")
        if verify:
            for name, digest in self.manifest.get("sha256", {}).items():
                if sha256_file(self.dir / name) != digest:
                    raise ServeError(f"{self.dir / name}: sha256 differs from manifest.json (modified?)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or usable_cores()
        opts.log_severity_level = 3
        providers = choose_providers("auto")
        files = self.manifest["files"]
        self.sessions = {
            k: ort.InferenceSession(str(self.dir / f), sess_options=opts, providers=providers)
            for k, f in files.items()
        }
        self.inputs = {k: {i.name for i in s.get_inputs()} for k, s in self.sessions.items()}
        self.outputs = {k: [o.name for o in s.get_outputs()] for k, s in self.sessions.items()}
        gen = self.manifest["generation"]
        self.start_id, self.eos_id = gen["decoder_start_token_id"], gen["eos_token_id"]
        self.pad_id = gen["pad_token_id"] if gen.get("pad_token_id") is not None else self.eos_id
        config_file = self.dir / "generation_config.json"
        self.config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        self.max_new_tokens_cap = max_new_tokens_cap
        self.tokenizer = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.manifest["max_length"])
        self.prefix = self.manifest.get("source_prefix") or ""

    # -- public ------------------------------------------------------------------------------------------

    def generate(self, texts: Sequence[str], params: Seq2SeqParams | None = None) -> list[dict[str, Any]]:
        """One result per text: generated_text, token_ids (after the decoder start, up to EOS) and
        finish_reason (eos_token | length)."""
        params = params or Seq2SeqParams(num_beams=int(self.config.get("num_beams") or 1))
        if not texts:
            return []
        if params.num_beams < 1 or params.max_new_tokens < 1:
            raise ServeError("num_beams and max_new_tokens must be >= 1")
        if params.num_beams > 1 and params.sampling:
            raise ServeError("beam search with sampling is not supported: use num_beams 1 to sample")
        ids, mask = self.encode(texts)
        limit = min(params.max_new_tokens, self.max_new_tokens_cap)
        if params.num_beams > 1:
            sequences = self._beam_search(ids, mask, params, 1 + limit)
        else:
            sequences = self._greedy_or_sample(ids, mask, params, 1 + limit)
        return [self._result(s) for s in sequences]

    def pipeline_outputs(self, texts: Sequence[str], key: str, params=None) -> list[dict[str, str]]:
        """The Inference API shapes: [{"translation_text": ...}] or [{"summary_text": ...}]."""
        return [{key: r["generated_text"]} for r in self.generate(texts, params)]

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encs = self.tokenizer.encode_batch([self.prefix + t for t in texts])
        width = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for r, e in enumerate(encs):
            ids[r, : len(e.ids)] = e.ids
            mask[r, : len(e.ids)] = 1
        return ids, mask

    # -- the model ---------------------------------------------------------------------------------------

    def _encode(self, ids, mask) -> np.ndarray:
        return self.sessions["encoder"].run(
            ["last_hidden_state"], {"input_ids": ids, "attention_mask": mask}
        )[0]

    def _step(self, tokens: np.ndarray, hidden, mask, past) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits of the newest position (rows, vocab) and the cache for the next step."""
        kind = "decoder" if past is None else "decoder_with_past"
        feeds = {"input_ids": tokens, "encoder_attention_mask": mask, "encoder_hidden_states": hidden}
        feeds.update(past or {})
        feeds = {k: v for k, v in feeds.items() if k in self.inputs[kind]}
        out = dict(zip(self.outputs[kind], self.sessions[kind].run(None, feeds), strict=True))
        new_past = dict(past or {})
        for name, value in out.items():
            if name.startswith("present."):
                new_past[name.replace("present.", "past_key_values.", 1)] = value
        return out["logits"][:, -1, :].astype(np.float32), new_past

    # -- logits rules (transformers' processors) ---------------------------------------------------------

    def _process(
        self, scores: np.ndarray, sequences: np.ndarray, cur_len: int, max_length: int
    ) -> np.ndarray:
        """scores (rows, vocab) for the token after sequences[:, :cur_len], masked with -inf as
        transformers' logits processors do."""
        c = self.config
        ngram = c.get("no_repeat_ngram_size") or 0
        if ngram and cur_len + 1 >= ngram:
            for r in range(len(scores)):
                seq = sequences[r, :cur_len].tolist()
                prefix = seq[cur_len - ngram + 1 :]
                for i in range(cur_len - ngram + 1):
                    if seq[i : i + ngram - 1] == prefix:
                        scores[r, seq[i + ngram - 1]] = -np.inf
        if cur_len < (c.get("min_length") or 0):
            scores[:, self.eos_id] = -np.inf
        for words in c.get("bad_words_ids") or []:
            if len(words) == 1:
                scores[:, words[0]] = -np.inf
        forced = (
            c.get("forced_bos_token_id")
            if cur_len == 1
            else c.get("forced_eos_token_id")
            if cur_len == max_length - 1
            else None
        )
        if isinstance(forced, list):
            forced = forced[0] if forced else None
        if forced is not None:
            scores[:] = -np.inf
            scores[:, forced] = 0
        return scores

    # -- search ------------------------------------------------------------------------------------------

    def _greedy_or_sample(self, ids, mask, params: GenerationParams, max_length: int) -> list[list[int]]:
        rows = len(ids)
        rng = np.random.default_rng(params.seed)
        hidden, past = self._encode(ids, mask), None
        sequences = np.full((rows, max_length), self.pad_id, dtype=np.int64)
        sequences[:, 0] = self.start_id
        done = np.zeros(rows, dtype=bool)
        cur_len = 1
        while cur_len < max_length and not done.all():
            logits, past = self._step(sequences[:, cur_len - 1 : cur_len], hidden, mask, past)
            scores = self._process(logits, sequences, cur_len, max_length)
            for r in range(rows):
                token = self.pad_id if done[r] else _choose(scores[r].astype(np.float64), params, rng)[0]
                sequences[r, cur_len] = token
                done[r] |= token == self.eos_id
            cur_len += 1
        return [s[1:cur_len].tolist() for s in sequences]

    def _beam_search(self, ids, mask, params: Seq2SeqParams, max_length: int) -> list[list[int]]:
        """transformers' (4.5x) vectorized beam search, in numpy: the same top-2k candidates, running and
        finished beams, length penalty on the generated length and early-stopping heuristic."""
        c = self.config
        nb = params.num_beams
        lp = np.float32(
            params.length_penalty if params.length_penalty is not None else c.get("length_penalty", 1.0)
        )
        early = params.early_stopping if params.early_stopping is not None else c.get("early_stopping", False)
        batch = len(ids)
        keep = 2 * nb
        hidden = np.repeat(self._encode(ids, mask), nb, axis=0)
        mask = np.repeat(mask, nb, axis=0)
        past = None
        running = np.full((batch, nb, max_length), self.pad_id, dtype=np.int64)
        running[:, :, 0] = self.start_id
        finished = running.copy()
        running_scores = np.zeros((batch, nb), dtype=np.float32)
        running_scores[:, 1:] = NEG
        finished_scores = np.full((batch, nb), NEG, dtype=np.float32)
        is_finished = np.zeros((batch, nb), dtype=bool)
        lengths = np.zeros((batch, nb), dtype=np.int64)  # generated tokens of each finished slot
        open_batch = np.ones(batch, dtype=bool)  # the early-stop heuristic is not yet satisfied
        top_mask = np.arange(keep) < nb
        cur_len = 1
        while True:
            flat = running.reshape(batch * nb, max_length)
            logits, past = self._step(flat[:, cur_len - 1 : cur_len], hidden, mask, past)
            logp = _log_softmax(logits)
            logp = self._process(logp, flat, cur_len, max_length)
            vocab = logp.shape[-1]
            total = (logp.reshape(batch, nb, vocab) + running_scores[:, :, None]).reshape(batch, nb * vocab)
            order = np.argsort(-total, axis=1, kind="stable")[:, :keep]
            top_scores = np.take_along_axis(total, order, axis=1)
            src_beam, token = order // vocab, order % vocab
            cand = np.take_along_axis(running, src_beam[:, :, None], axis=1)
            cand[:, :, cur_len] = token
            hits = (token == self.eos_id) | (cur_len + 1 >= max_length)
            # running beams for the next step: the best candidates that did not finish
            masked = top_scores + hits.astype(np.float32) * NEG
            nxt = np.argsort(-masked, axis=1, kind="stable")[:, :nb]
            running = np.take_along_axis(cand, nxt[:, :, None], axis=1)
            running_scores = np.take_along_axis(masked, nxt, axis=1)
            beam_idx = np.take_along_axis(src_beam, nxt, axis=1) + np.arange(batch)[:, None] * nb
            # finished beams: merge the candidates that just finished (among the top nb) into the kept ones
            just = hits & top_mask[None, :]
            normed = top_scores / np.float32((cur_len + 1 - 1) ** lp)
            full = is_finished.all(axis=1, keepdims=True) & (early is True)
            normed = normed + full.astype(np.float32) * NEG
            normed = normed + (~open_batch[:, None]).astype(np.float32) * NEG
            normed = normed + (~just).astype(np.float32) * NEG
            merged_scores = np.concatenate([finished_scores, normed.astype(np.float32)], axis=1)
            pick = np.argsort(-merged_scores, axis=1, kind="stable")[:, :nb]
            finished = np.take_along_axis(np.concatenate([finished, cand], axis=1), pick[:, :, None], axis=1)
            finished_scores = np.take_along_axis(merged_scores, pick, axis=1)
            new_len = np.full((batch, keep), cur_len, dtype=np.int64)
            lengths = np.take_along_axis(np.concatenate([lengths, new_len], axis=1), pick, axis=1)
            is_finished = np.take_along_axis(np.concatenate([is_finished, just], axis=1), pick, axis=1)
            past = _reorder(past, beam_idx.reshape(-1))
            cur_len += 1
            # the early-stop heuristic (early_stopping False / "never") and the loop's end
            if early == "never" and lp > 0:
                best_len = max_length - 1
            else:
                best_len = cur_len - 1
            best_running = running_scores[:, :1] / np.float32(best_len**lp)
            worst = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), NEG)
            open_batch &= (best_running > worst).any(axis=1)
            exists_open = not (is_finished.all() and early is True)
            if not (open_batch.any() and exists_open and not hits.all()):
                break
        return [finished[b, 0, 1 : 1 + lengths[b, 0]].tolist() for b in range(batch)]

    def _result(self, tokens: list[int]) -> dict[str, Any]:
        if self.eos_id in tokens:
            tokens = tokens[: tokens.index(self.eos_id) + 1]
            reason = "eos_token"
        else:
            reason = "length"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return {"generated_text": text, "token_ids": tokens, "finish_reason": reason}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


def _reorder(past: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The decoder's self-attention cache follows the chosen beams; the encoder's is the same for every
    beam of a batch item and stays."""
    return {k: (v[index] if ".decoder." in k else v) for k, v in past.items()}


def generate_lines(
    generator: Seq2SeqGenerator,
    lines: Sequence[str],
    params: Seq2SeqParams | None = None,
    batch_size: int = 16,
):
    """sft-predict's shape: one output text per input line, in order (newlines inside an output become
    spaces, so line i of the output answers line i of the input)."""
    for first in range(0, len(lines), batch_size):
        for result in generator.generate(list(lines[first : first + batch_size]), params):
            yield " ".join(result["generated_text"].splitlines())
