"""Sequence-to-sequence fine-tuning (`--task seq2seq`): translation, summarization, any text-to-text.

- Data: source/target columns of a table (CSV, TSV, JSONL, Parquet, hub; --source-column, --target-column),
  or two parallel text files given as `--train SRC:TGT` (line i of SRC translates to line i of TGT).
  --source-prefix is put before every source (T5 style: "translate English to German: ").
- Models: T5 / mT5 / BART / Marian / Pegasus through AutoModelForSeq2SeqLM.
- Loss: the decoder's hidden states through our fused linear + cross-entropy over the LM head (the
  B x T x V logits never exist); label padding is ignored (-100).
- Evaluation: the token-mean loss, and on generated text (--generation-max-length, --num-beams) sacreBLEU's
  BLEU and chrF and rouge-score's ROUGE-1/2/L (F-measure), all in percent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError
from .tasks import Task, pad_rows

IGNORE = -100
_T5_LIKE = {"t5", "mt5", "umt5", "longt5"}  # scale the decoder output by d_model**-0.5 when the head is tied


@dataclass
class Pair:
    source: str
    target: str
    where: str


def read_pairs(spec: str, *, source_column: str, target_column: str) -> list[Pair]:
    """Pairs from `SRC:TGT` parallel text files, or from a table's source and target columns."""
    parallel = _parallel_files(spec)
    pairs = _read_parallel(*parallel) if parallel else _read_columns(spec, source_column, target_column)
    for p in pairs:
        if not p.source.strip():
            raise InputError(f"{p.where}: empty source text")
        if not p.target.strip():
            raise InputError(f"{p.where}: empty target text")
    return pairs


def _parallel_files(spec: str) -> tuple[Path, Path] | None:
    if ":" not in spec or Path(spec).exists():
        return None
    src, tgt = (Path(p) for p in spec.split(":", 1))
    if not src.is_file() and not tgt.is_file():
        return None  # a hub dataset NAME:SPLIT
    for path in (src, tgt):
        if not path.is_file():
            raise InputError(f"{path}: file not found (parallel text files are given as SRC:TGT)")
    return src, tgt


def _read_parallel(src: Path, tgt: Path) -> list[Pair]:
    lines = []
    for path in (src, tgt):
        try:
            lines.append(path.read_text(encoding="utf-8").splitlines())
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(lines[0]) != len(lines[1]):
        raise InputError(
            f"{src}: {len(lines[0])} lines but {tgt} has {len(lines[1])}: parallel files need one "
            f"target line per source line"
        )
    if not lines[0]:
        raise InputError(f"{src}: no lines")
    return [
        Pair(s, t, f"{src}:{i + 1} / {tgt}:{i + 1}")
        for i, (s, t) in enumerate(zip(lines[0], lines[1], strict=True))
    ]


def _read_columns(spec: str, source_column: str, target_column: str) -> list[Pair]:
    from .data import read_table

    table = read_table(spec)
    for option, column in (("source_column", source_column), ("target_column", target_column)):
        if column not in table.columns:
            raise InputError(
                f"{table.source}: no column {column!r} for --{option.replace('_', '-')} "
                f"(columns: {', '.join(map(str, table.columns))})"
            )
    out = []
    for row, where in zip(table.rows, table.where, strict=True):
        texts = []
        for column in (source_column, target_column):
            value = row.get(column)
            if value is not None and not isinstance(value, str):
                raise InputError(f"{where}: column {column!r} must hold text, found {type(value).__name__}")
            texts.append(value or "")
        out.append(Pair(texts[0], texts[1], f"{where}"))
    return out


def encode_pairs(tokenizer, pairs: list[Pair], *, prefix: str, max_length: int) -> list[dict]:
    """input_ids / attention_mask of prefix + source, labels = the target's ids (with the tokenizer's EOS)."""
    enc = tokenizer([prefix + p.source for p in pairs], truncation=True, max_length=max_length)
    labels = tokenizer(text_target=[p.target for p in pairs], truncation=True, max_length=max_length)
    return [
        {
            "input_ids": enc["input_ids"][i],
            "attention_mask": enc["attention_mask"][i],
            "labels": labels["input_ids"][i],
            "example": i,
        }
        for i in range(len(pairs))
    ]


def head_of(model) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The LM head as (weight, bias, scale of the decoder output): BART-style models add
    final_logits_bias; T5 with a tied head scales the decoder output by d_model**-0.5."""
    head = model.get_output_embeddings()
    bias = head.bias
    extra = getattr(model, "final_logits_bias", None)
    if extra is not None:
        bias = extra[0] if bias is None else bias + extra[0]
    cfg = model.config
    scale = cfg.d_model**-0.5 if cfg.model_type in _T5_LIKE and cfg.tie_word_embeddings else 1.0
    return head.weight, bias, scale


def decoder_hidden(model, batch) -> torch.Tensor:
    """The decoder's last hidden states for the shifted labels (teacher forcing), without the LM head."""
    encoded = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return model.get_decoder()(
        input_ids=decoder_input_ids,
        encoder_hidden_states=encoded[0],
        encoder_attention_mask=batch["attention_mask"],
    ).last_hidden_state


def seq2seq_loss(model, batch, *, label_smoothing: float = 0.0, backend: str = "auto", reduction="mean"):
    from kernels import fused_linear_cross_entropy

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    weight, bias, scale = head_of(base)
    hidden = decoder_hidden(base, batch)
    if scale != 1.0:
        hidden = hidden * scale
    return fused_linear_cross_entropy(
        hidden.flatten(0, 1),
        weight,
        batch["labels"].flatten(),
        bias=bias,
        ignore_index=IGNORE,
        label_smoothing=label_smoothing,
        reduction=reduction,
        backend=backend,
    )


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacreBLEU defaults), mean ROUGE-1/2/L F-measure (rouge-score, stemmed), in %."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        for name, score in scorer.score(ref, pred).items():
            rouge[name] += score.fmeasure
    n = max(1, len(predictions))
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        **{name: 100.0 * total / n for name, total in rouge.items()},
    }


class Seq2Seq(Task):
    auto_model = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    default_metric = "bleu"

    def load(self) -> None:
        cfg = self.cfg
        columns = {"source_column": cfg.source_column, "target_column": cfg.target_column}
        self.train_pairs, self.eval_pairs = self.read_splits(lambda path: read_pairs(path, **columns))
        self.labels = None

    def encode(self, tokenizer):
        self.tokenizer = tokenizer  # evaluation decodes generated ids
        kw = {"prefix": self.cfg.source_prefix or "", "max_length": self.cfg.max_length}
        train = encode_pairs(tokenizer, self.train_pairs, **kw)
        return train, encode_pairs(tokenizer, self.eval_pairs, **kw) if self.eval_pairs else None

    def collate(self, rows, pad_id, device):
        return pad_rows(rows, {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}, device)

    def loss(self, model, batch, kernels_backend):
        return seq2seq_loss(model, batch, label_smoothing=self.cfg.label_smoothing, backend=kernels_backend)

    def label_counts(self, rows) -> list[int]:
        raise InputError("--class-weights does not apply to --task seq2seq")

    @torch.no_grad()
    def evaluate(self, model, rows, pad_id, device, batch_size, kernels_backend):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        total, count, predictions = 0.0, 0, {}
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # less padding
        for start in range(0, len(order), batch_size):
            chunk = [rows[i] for i in order[start : start + batch_size]]
            batch = self.collate(chunk, pad_id, device)
            total += seq2seq_loss(base, batch, backend=kernels_backend, reduction="sum").item()
            count += int((batch["labels"] != IGNORE).sum())
            generated = base.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                max_length=self.cfg.generation_max_length,
                num_beams=self.cfg.num_beams,
                do_sample=False,
            )
            texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            predictions.update({r["example"]: t.strip() for r, t in zip(chunk, texts, strict=True)})
        preds = [predictions[r["example"]] for r in rows]
        refs = [self.eval_pairs[r["example"]].target for r in rows]
        return {"loss": total / max(1, count), "tokens": count, **text_metrics(preds, refs)}
