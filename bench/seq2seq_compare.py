"""Seq2seq: sft-train --task seq2seq against transformers' Seq2SeqTrainer on Multi30K English -> German.

No pretrained seq2seq model ships, so both arms train the same small T5 from the same random init, with a
subword tokenizer (the `tokenizers` library's Unigram, T5 style: </s> appended) trained on the training
text. The same rows, the same batches in the same order (sft-train's), AdamW at the same peak learning rate
with linear warmup/decay, the same step budget and seed. After training both arms are scored by the same
code (sft.seq2seq's evaluate: token-mean loss, greedy generation, sacreBLEU BLEU / chrF, ROUGE) on the
same validation sentences.

    python -m bench.seq2seq_compare --rows 29000 --steps 300 --eval-rows 500 --tag cpu
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from .common import print_table, write_outputs
from .hf_trainer import same_order_trainer, timed_run_args

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multi30k"


def build_model(work: Path, rows: int, vocab: int, seed: int, size: dict) -> Path:
    """Unigram tokenizer trained on the first `rows` English and German training lines + a random T5."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    text = []
    for lang in ("en", "de"):
        text += (DATA / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:rows]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(text, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **size,
    )
    out = work / "t5-random"
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def overrides(args, model: Path, work: Path) -> dict:
    return {
        "task": "seq2seq",
        "train": f"{DATA}/train.en:{DATA}/train.de",
        "eval": f"{DATA}/val.en:{DATA}/val.de",
        "model": str(model),
        "output": str(work / "ours"),
        "max_train_samples": args.rows,
        "max_eval_samples": args.eval_rows,
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "eval_batch_size": 64,
        "lr": args.lr,
        "warmup_ratio": 0.05,
        "max_length": args.max_length,
        "generation_max_length": args.max_length,
        "eval_every": 10**9,  # once, after the last step
        "seed": args.seed,
        "kernels": "auto",
        "progress": False,
        "tensorboard": False,
        "plots": False,
    }


def run_ours(cfg_overrides: dict) -> dict:
    from sft import load_config, train

    t0 = time.perf_counter()
    result = train(load_config(overrides=cfg_overrides))
    return {
        "metrics": result.metrics,
        "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - t0,
    }


def run_trainer(cfg_overrides: dict) -> dict:
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    from sft import load_config
    from sft.tasks import make_task

    t0 = time.perf_counter()
    cfg = load_config(overrides=cfg_overrides)
    task = make_task(cfg)
    task.load()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    set_seed(cfg.seed)
    model = AutoModelForSeq2SeqLM.from_pretrained(cfg.model)
    train_rows, eval_rows = task.encode(tokenizer)

    SameOrderTrainer = same_order_trainer(Seq2SeqTrainer, cfg.batch_size, cfg.seed)

    args = timed_run_args(
        Seq2SeqTrainingArguments,
        seed=cfg.seed,
        output_dir=tempfile.mkdtemp(prefix="hf-seq2seq-"),
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_steps=cfg.max_steps,
        warmup_ratio=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
    )
    rows = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in train_rows]
    trainer = SameOrderTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
    )
    train_seconds = trainer.train().metrics["train_runtime"]
    metrics = task.evaluate(
        trainer.model.eval(), eval_rows, tokenizer.pad_token_id, trainer.model.device, 64, "torch"
    )
    return {"metrics": metrics, "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=29000)
    p.add_argument("--eval-rows", type=int, default=500)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="cpu")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. how quiet the machine was)")
    p.add_argument("--out", type=Path, default=None, help="directory for the JSON + PNG [bench/results]")
    args = p.parse_args(argv)
    size = {
        "d_model": args.d_model,
        "d_kv": 32,
        "d_ff": 4 * args.d_model,
        "num_layers": args.layers,
        "num_heads": 4,
    }
    work = Path(tempfile.mkdtemp(prefix="seq2seq-bench-"))
    model = build_model(work, args.rows, args.vocab, args.seed, size)
    cfg = overrides(args, model, work)
    load_before = os.getloadavg()
    results = {"ours": run_ours(cfg), "trainer": run_trainer(cfg)}
    table = [
        {
            "arm": arm,
            **{m: round(r["metrics"][m], 3) for m in ("loss", "bleu", "chrf", "rougeL")},
            "train_s": round(r["train_seconds"], 1),
            "steps_per_s": round(args.steps / r["train_seconds"], 3),
        }
        for arm, r in results.items()
    ]
    print_table(table, list(table[0]))
    record = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": size,
        "results": results,
        "table": table,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "note": args.note,
    }
    write_outputs(
        f"seq2seq_compare_multi30k_{args.tag}", record, args.out, draw=lambda plt: _plot(plt, table)
    )


def _plot(plt, table: list[dict]):
    """BLEU / chrF side by side, and training time."""
    fig, (quality, speed) = plt.subplots(1, 2, figsize=(9, 3.4))
    arms = [r["arm"] for r in table]
    for i, metric in enumerate(("bleu", "chrf")):
        quality.bar(
            [x + 0.4 * i for x in range(len(arms))], [r[metric] for r in table], width=0.4, label=metric
        )
    quality.set_xticks([x + 0.2 for x in range(len(arms))], arms)
    quality.set_title("Multi30K en-de validation")
    quality.legend()
    speed.bar(arms, [r["train_s"] for r in table], color="gray")
    speed.set_title("training seconds")
    return fig


if __name__ == "__main__":
    main()
