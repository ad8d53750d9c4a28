"""Extractive QA: sft-train --task question-answering against transformers' Trainer on XQuAD English.

Split (as ../shared/data/xquad/SOURCE.txt suggests): the first --train-articles (36) of the 48 articles
train, the rest evaluate (--eval-articles caps them for a quick run). Both arms fine-tune the same model
(the packaged MiniLM unless --model) from the same seed (so the new QA head starts from the same init),
with AdamW at the same peak learning rate, linear warmup (ratio 0.1) and decay, weight decay 0.01 (none on
biases and norms), gradient clipping 1.0, batch size, epochs, --max-length, --doc-stride, and evaluate once,
after training, with n-best 20 and answers of at most 30 tokens.

- ours: `sft.train` as sft-train runs it (padding-free batches); its EM / F1 are what sft-train prints
  (sft.qa: the best span over all windows by serve.qa.squad_answer, scored by sft.qa.squad_metrics).
- trainer: `Trainer` + AutoModelForQuestionAnswering, features built as transformers'
  examples/pytorch/question-answering/run_qa.py builds them (prepare_train_features /
  prepare_validation_features, padded to --max-length as its default pad_to_max_length=True), answers by a
  port of that example's utils_qa.postprocess_qa_predictions (SQuAD v1), scored by the same
  sft.qa.squad_metrics. The window rows are the same rows in the same order as sft-train's (the same
  tokenizer call, one example after the other; checked at run time), so the Trainer is fed sft-train's
  batches in sft-train's order (bench.hf_trainer.same_order_trainer); if they ever differ it falls back to
  the Trainer's own sampler and the JSON's note says so.

What still differs in training: the dropout masks, padding (the Trainer's windows are padded to
--max-length, sft-train's are not), and the warmup's first steps (sft-train warms up over int(0.1 * steps)
steps starting at lr / (warmup + 1), the Trainer over ceil(0.1 * steps) starting at 0).

Two more rows separate the models from the decoders: each trained model is also decoded by the other
arm's answer search (sft's search on the Trainer's model, which also gives its eval loss; the example's
post-processing on sft-train's saved model), scored by the same function.

    python -m bench.qa_compare --epochs 2 --lr 5e-5 --batch-size 16 --max-length 256 --doc-stride 64 \
        --seed 42 --tag cpu
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from .common import print_table, write_outputs
from .hf_trainer import same_order_trainer, timed_run_args

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "xquad"
NO_MID_EVAL = 10**9  # eval_every: evaluate after the last step only


# -- data ------------------------------------------------------------------------------------------------


def write_splits(data_file: Path, train_articles: int, eval_articles: int | None, work: Path):
    """The first `train_articles` articles and (up to `eval_articles` of) the rest, as SQuAD JSON files."""
    record = json.loads(data_file.read_text(encoding="utf-8"))
    articles = record["data"]
    if not 0 < train_articles < len(articles):
        raise SystemExit(f"error: --train-articles must be in 1..{len(articles) - 1}, got {train_articles}")
    rest = articles[train_articles:]
    splits = {"train": articles[:train_articles], "eval": rest[:eval_articles] if eval_articles else rest}
    paths = {}
    for name, part in splits.items():
        paths[name] = work / f"xquad.en.{name}.json"
        paths[name].write_text(json.dumps({"version": record.get("version", ""), "data": part}), "utf-8")
    count = {name: sum(len(p["qas"]) for a in part for p in a["paragraphs"]) for name, part in splits.items()}
    return paths, {f"{name}_articles": len(part) for name, part in splits.items()} | {
        f"{name}_questions": n for name, n in count.items()
    }


# -- the run_qa.py features ------------------------------------------------------------------------------


def _tokenize(tokenizer, examples, max_length: int, doc_stride: int):
    """run_qa.py's tokenizer call (question first: a right-padding tokenizer), padded to max_length."""
    if tokenizer.padding_side != "right":
        raise SystemExit("error: this port handles right-padding tokenizers only (question | context)")
    return tokenizer(
        [ex.question.lstrip() for ex in examples],
        [ex.context for ex in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def _inputs(enc, i: int) -> dict:
    return {k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def prepare_train_features(tokenizer, examples, *, max_length: int, doc_stride: int) -> list[dict]:
    """As run_qa.py's prepare_train_features: a window that does not hold the whole (first) answer is
    labelled with the [CLS] index; otherwise the start / end tokens are found by walking the offsets in from
    the context's two ends."""
    enc = _tokenize(tokenizer, examples, max_length, doc_stride)
    rows = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        cls_index = enc["input_ids"][i].index(tokenizer.cls_token_id)
        seq = enc.sequence_ids(i)
        text, start_char = examples[enc["overflow_to_sample_mapping"][i]].answers[0]
        end_char = start_char + len(text)
        first = seq.index(1)
        last = len(seq) - 1 - seq[::-1].index(1)
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            start, end = cls_index, cls_index
        else:
            # the example's walk: past the context it steps over [SEP] and padding, whose offsets are (0, 0)
            while first < len(offsets) and offsets[first][0] <= start_char:
                first += 1
            while offsets[last][1] >= end_char:
                last -= 1
            start, end = first - 1, last + 1
        rows.append({**_inputs(enc, i), "start_positions": start, "end_positions": end})
    return rows


def prepare_validation_features(tokenizer, examples, *, max_length: int, doc_stride: int) -> list[dict]:
    """As run_qa.py's prepare_validation_features: the model inputs, the example each window comes from and
    its offsets with everything outside the context set to None."""
    enc = _tokenize(tokenizer, examples, max_length, doc_stride)
    rows = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        rows.append(
            {
                "inputs": _inputs(enc, i),
                "example_id": examples[enc["overflow_to_sample_mapping"][i]].id,
                "offset_mapping": [o if seq[k] == 1 else None for k, o in enumerate(offsets)],
            }
        )
    return rows


def postprocess_qa_predictions(
    examples, features, start_logits, end_logits, *, n_best_size: int = 20, max_answer_length: int = 30
) -> dict[str, str]:
    """SQuAD v1.1 answers, following transformers' examples/pytorch/question-answering/utils_qa.py
    (postprocess_qa_predictions, version_2_with_negative=False): in every window of an example, each pair of
    its n_best_size highest start and end logits (over all positions, question and padding included) that
    lies in the context, in order and at most max_answer_length tokens long is a candidate scored
    start + end; the best candidate over all windows wins (the first found of equal scores, as the example's
    stable sort); "empty" when there is no candidate, or one only (of those kept) and it has no text."""
    import numpy as np

    windows = collections.defaultdict(list)
    for f, feature in enumerate(features):
        windows[feature["example_id"]].append(f)
    answers = {}
    for ex in examples:
        best_score, best_text, candidates = None, None, 0
        for f in windows[ex.id]:
            offsets, start, end = features[f]["offset_mapping"], start_logits[f], end_logits[f]
            starts = np.argsort(start)[-1 : -n_best_size - 1 : -1].tolist()
            ends = np.argsort(end)[-1 : -n_best_size - 1 : -1].tolist()
            for s in starts:
                for e in ends:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    score, candidates = start[s] + end[e], candidates + 1
                    if best_score is None or score > best_score:
                        best_score, best_text = score, ex.context[offsets[s][0] : offsets[e][1]]
        kept = min(candidates, n_best_size)  # the example keeps the n_best_size best before this check
        answers[ex.id] = "empty" if kept == 0 or (kept == 1 and best_text == "") else best_text
    return answers


def example_decode(model, tokenizer, examples, cfg, batch_size: int) -> dict[str, str]:
    """The example's evaluation of `model`: validation features, logits, post-processing."""
    import numpy as np
    import torch

    features = prepare_validation_features(
        tokenizer, examples, max_length=cfg.max_length, doc_stride=cfg.doc_stride
    )
    device = next(model.parameters()).device
    starts, ends = [], []
    model.eval()
    with torch.no_grad():
        for first in range(0, len(features), batch_size):
            part = [f["inputs"] for f in features[first : first + batch_size]]
            batch = {k: torch.tensor([p[k] for p in part], device=device) for k in part[0]}
            out = model(**batch)
            starts.append(out.start_logits.float().cpu().numpy())
            ends.append(out.end_logits.float().cpu().numpy())
    return postprocess_qa_predictions(
        examples,
        features,
        np.concatenate(starts),
        np.concatenate(ends),
        n_best_size=cfg.n_best_size,
        max_answer_length=cfg.max_answer_length,
    )


# -- the arms ----------------------------------------------------------------------------------------------


def _golds(task) -> dict[str, list[str]]:
    return {ex.id: [t for t, _ in ex.answers] for ex in task.eval_ex}


def _score(predictions: dict[str, str], task) -> dict:
    from sft.qa import squad_metrics

    return squad_metrics(predictions, _golds(task))


def _task(cfg_overrides: dict):
    from transformers import AutoTokenizer

    from sft import load_config
    from sft.models import default_model_path
    from sft.tasks import make_task

    cfg = load_config(overrides=cfg_overrides)
    task = make_task(cfg)
    task.load()
    model_path = cfg.model or default_model_path()
    return cfg, task, model_path, AutoTokenizer.from_pretrained(model_path)


def trained_windows(n: int, batch_size: int, steps: int) -> int:
    """Rows in the first `steps` batches when each epoch cuts `n` rows into batches, the last one short
    (both arms: no gradient accumulation, no drop_last). Counted, not read from a collator: the Trainer's
    loader fetches one batch ahead."""
    per_epoch = math.ceil(n / batch_size)
    last = n - batch_size * (per_epoch - 1)
    return sum(last if step % per_epoch == per_epoch - 1 else batch_size for step in range(steps))


def run_ours(cfg_overrides: dict) -> dict:
    """sft-train as sft-train runs it; its batches replayed (outside the timing) to count the windows."""
    from sft import train

    t0 = time.perf_counter()
    cfg, task, _, tokenizer = _task(cfg_overrides)
    result = train(cfg)
    wall = time.perf_counter() - t0
    rows, _ = task.encode(tokenizer)
    trained = trained_windows(len(rows), cfg.batch_size, result.steps)
    return {
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "train_seconds": result.train_seconds,
        "wall_seconds": wall,
        "steps": result.steps,
        "train_windows": len(rows),
        "trained_windows": trained,
        "samples_per_s": trained / result.train_seconds,
        "checkpoint": str(result.output_dir),
    }


def decode_ours_like_example(cfg_overrides: dict, checkpoint: str) -> dict:
    """sft-train's saved model decoded by the example's post-processing."""
    from transformers import AutoModelForQuestionAnswering

    cfg, task, _, tokenizer = _task(cfg_overrides)
    model = AutoModelForQuestionAnswering.from_pretrained(checkpoint)
    predictions = example_decode(model, tokenizer, task.eval_ex, cfg, cfg.eval_batch_size)
    return {"metrics": _score(predictions, task), "predictions": predictions}


def run_trainer(cfg_overrides: dict) -> dict:
    """The run_qa.py recipe through transformers.Trainer on the same examples, then its evaluation."""
    from transformers import AutoModelForQuestionAnswering, Trainer, TrainingArguments, default_data_collator
    from transformers import set_seed as hf_set_seed

    t0 = time.perf_counter()
    cfg, task, model_path, tokenizer = _task(cfg_overrides)
    hf_set_seed(cfg.seed)  # before loading: the new QA head starts from sft-train's init
    model = AutoModelForQuestionAnswering.from_pretrained(model_path)
    rows = prepare_train_features(
        tokenizer, task.train_ex, max_length=cfg.max_length, doc_stride=cfg.doc_stride
    )
    ours_rows, eval_rows = task.encode(tokenizer)
    same_rows = len(rows) == len(ours_rows) and all(
        r["input_ids"][: len(o["input_ids"])] == o["input_ids"] for r, o in zip(rows, ours_rows, strict=True)
    )
    label_differences = (
        sum(
            (r["start_positions"], r["end_positions"]) != (o["start_positions"], o["end_positions"])
            for r, o in zip(rows, ours_rows, strict=True)
        )
        if same_rows
        else None
    )
    args = timed_run_args(
        TrainingArguments,
        seed=cfg.seed,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        warmup_ratio=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
    )
    trainer_cls = same_order_trainer(Trainer, cfg.batch_size, cfg.seed) if same_rows else Trainer
    trainer = trainer_cls(model=model, args=args, train_dataset=rows, data_collator=default_data_collator)
    out = trainer.train()
    train_seconds = out.metrics["train_runtime"]
    wall = time.perf_counter() - t0
    trained = trained_windows(len(rows), cfg.batch_size, out.global_step)
    model = trainer.model.eval()
    predictions = example_decode(model, tokenizer, task.eval_ex, cfg, cfg.eval_batch_size)
    # the same model through sft's answer search: its eval loss (on sft's window labels) and EM / F1
    sft_view = task.evaluate(model, eval_rows, tokenizer.pad_token_id or 0, model.device, 64, "torch")
    return {
        "metrics": _score(predictions, task),
        "train_seconds": train_seconds,
        "wall_seconds": wall,
        "steps": out.global_step,
        "train_windows": len(rows),
        "trained_windows": trained,
        "samples_per_s": trained / train_seconds,
        "same_order": same_rows,
        "label_differences_vs_sft": label_differences,
        "sft_decode_metrics": {k: v for k, v in sft_view.items() if isinstance(v, (int, float))},
        "predictions": predictions,
    }


# -- the record --------------------------------------------------------------------------------------------


def table(results: dict) -> list[dict]:
    ours, trainer = results["ours"], results["trainer"]

    def row(arm, decoder, metrics, r):
        return {
            "arm": arm,
            "decoder": decoder,
            "EM": metrics["exact_match"],
            "F1": metrics["f1"],
            "eval_loss": metrics.get("loss"),
            "train_s": r["train_seconds"] if r else None,
            "windows": r["train_windows"] if r else None,
            "samples_per_s": r["samples_per_s"] if r else None,
        }

    rows = [
        row("ours", "sft", ours["metrics"], ours),
        row("trainer", "example", trainer["metrics"], trainer),
        row("trainer", "sft", trainer["sft_decode_metrics"], None),
    ]
    if "example_decode" in results:
        rows.append(row("ours", "example", results["example_decode"]["metrics"], None))
    return rows


def draw_record(rows: list[dict]):
    def draw(plt):
        fig, (ax_q, ax_t) = plt.subplots(1, 2, figsize=(11, 3.5))
        labels = [f"{r['arm']} / {r['decoder']} decode" for r in rows]
        y = range(len(rows))
        ax_q.barh([i - 0.2 for i in y], [r["EM"] for r in rows], height=0.4, label="EM")
        ax_q.barh([i + 0.2 for i in y], [r["F1"] for r in rows], height=0.4, label="F1")
        ax_q.set_yticks(list(y), labels)
        ax_q.set_xlabel("% (XQuAD en, held-out articles)")
        ax_q.legend()
        timed = [r for r in rows if r["train_s"] is not None]
        ax_t.barh([r["arm"] for r in timed], [r["train_s"] for r in timed])
        ax_t.set_xlabel("train seconds")
        return fig

    return draw


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA / "xquad.en.json"))
    p.add_argument("--train-articles", type=int, default=36, help="the first N articles train, the rest eval")
    p.add_argument("--eval-articles", type=int, help="evaluate on only the first N held-out articles")
    p.add_argument("--model", help="default: the packaged MiniLM (sft-train's default)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--doc-stride", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tag", default="cpu")
    p.add_argument("--out", help="directory for the JSON and PNG [default: bench/results]")
    a = p.parse_args(argv)
    data_file = Path(a.data)
    if not data_file.is_file():
        print(
            f"skipping: {data_file} not found (the shared datasets live in ../shared/data)", file=sys.stderr
        )
        raise SystemExit(2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="qa-compare-"))
    paths, split = write_splits(data_file, a.train_articles, a.eval_articles, work)
    base = {
        "task": "question-answering",
        "train": str(paths["train"]),
        "eval": str(paths["eval"]),
        "model": a.model,
        "output": str(work / "ours"),
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "eval_batch_size": 64,
        "lr": a.lr,
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "max_length": a.max_length,
        "doc_stride": a.doc_stride,
        "max_answer_length": 30,
        "n_best_size": 20,
        "seed": a.seed,
        "eval_every": NO_MID_EVAL,
        "progress": False,
        "tensorboard": False,
        "plots": False,
    }
    results = {"ours": run_ours(base)}
    results["example_decode"] = decode_ours_like_example(base, results["ours"]["checkpoint"])
    results["trainer"] = run_trainer(base)
    rows = table(results)
    print_table(rows, list(rows[0]))
    ours_pred, trainer_pred = results["example_decode"]["predictions"], results["trainer"]["predictions"]
    trainer_r = results["trainer"]
    note = (
        f"{split['train_questions']} training questions ({split['train_articles']} articles), "
        f"{split['eval_questions']} evaluation questions ({split['eval_articles']} articles). "
        + (
            "The Trainer got sft-train's batches in sft-train's order (the same window rows). "
            if trainer_r["same_order"]
            else "The window rows differed from sft-train's, so the Trainer used its own sampler. "
        )
        + f"Training labels that differ between run_qa.py's walk and sft's: "
        f"{trainer_r['label_differences_vs_sft']} of {trainer_r['train_windows']} windows. "
        "All EM / F1 by sft.qa.squad_metrics (official SQuAD v1.1 normalisation); the Trainer's eval loss "
        "is that of its model on sft's eval windows (the example computes none)."
    )
    from sft.models import default_model_path

    record = {
        "args": vars(a),
        "model": a.model or default_model_path(),
        "split": split,
        "hyperparameters": {k: v for k, v in base.items() if k not in ("train", "eval", "output")},
        "results": {
            arm: {k: v for k, v in r.items() if k not in ("predictions", "checkpoint")}
            for arm, r in results.items()
        },
        "same_prediction_both_models_example_decode": sum(ours_pred[q] == trainer_pred[q] for q in ours_pred),
        "table": rows,
        "note": note,
    }
    print(note)
    write_outputs(f"qa_compare_xquad_{a.tag}", record, Path(a.out) if a.out else None, draw_record(rows))


if __name__ == "__main__":
    main()
