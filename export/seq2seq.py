"""Seq2seq in sft-export: Optimum's `text2text-generation-with-past` (encoder_model.onnx, decoder_model.onnx,
decoder_with_past_model.onnx; the layout ORTModelForSeq2SeqLM loads), validated against PyTorch, and the
manifest fields serve's numpy generation (serve/seq2seq.py) needs.

Validation: on each batch of texts, PyTorch's greedy continuation (a few tokens) is teacher-forced through
both sides: the encoder's last_hidden_state over real tokens, the decoder's logits at every step, and the
decoder-with-past's logits and present key/values for the last step fed the decoder's cache.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sft.errors import InputError

from .checkpoint import Checkpoint, train_setting
from .validate import OutputDiff, check_tolerance, output_diff, validation_texts, worst_per_output

SEQ2SEQ_TASK = "text2text-generation-with-past"
GRAPHS = {
    "encoder": "encoder_model.onnx",
    "decoder": "decoder_model.onnx",
    "decoder_with_past": "decoder_with_past_model.onnx",
}
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
STEPS = 4  # greedy tokens teacher-forced through both sides in validation
BATCH = 8


def export_seq2seq(model_dir: Path, out_dir: Path, opset: int | None) -> Path:
    """Optimum's export without its post-processing (no merged decoder: three plain graphs)."""
    from .convert import export_with_optimum

    export_with_optimum(
        model_dir, out_dir, SEQ2SEQ_TASK, opset, graphs=tuple(GRAPHS.values()), post_process=False
    )
    return out_dir


class _Sessions:
    def __init__(self, directory: Path):
        from .runners import OrtSession

        self.encoder, self.decoder, self.decoder_with_past = (
            OrtSession(directory / GRAPHS[k]).session for k in GRAPHS
        )


def compare_seq2seq(
    model, tokenizer, onnx_dir: Path, texts: Sequence[str], max_length: int
) -> list[OutputDiff]:
    import torch

    sessions = _Sessions(onnx_dir)
    diffs = []
    for first in range(0, len(texts), BATCH):
        enc = tokenizer(
            list(texts[first : first + BATCH]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        feeds = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        with torch.no_grad():
            sequences = model.generate(
                **feeds, max_new_tokens=STEPS, min_new_tokens=STEPS, num_beams=1, do_sample=False
            )
            out = model(**feeds, decoder_input_ids=sequences, use_cache=True)
        np_feeds = {k: v.numpy().astype(np.int64) for k, v in feeds.items()}
        real = np_feeds["attention_mask"].astype(bool)
        (hidden,) = sessions.encoder.run(["last_hidden_state"], np_feeds)
        diffs.append(
            output_diff(
                "encoder.last_hidden_state", hidden[real], out.encoder_last_hidden_state.numpy()[real]
            )
        )
        dec_ids = sequences.numpy().astype(np.int64)
        common = {"encoder_attention_mask": np_feeds["attention_mask"], "encoder_hidden_states": hidden}
        names = [o.name for o in sessions.decoder.get_outputs()]
        first_out = dict(
            zip(names, sessions.decoder.run(None, {**common, "input_ids": dec_ids[:, :-1]}), strict=True)
        )
        logits = out.logits.float().numpy()
        diffs.append(output_diff("decoder.logits", first_out["logits"], logits[:, :-1]))
        past = {
            n.replace("present.", "past_key_values.", 1): v for n, v in first_out.items() if n != "logits"
        }
        wanted = {i.name for i in sessions.decoder_with_past.get_inputs()}
        with_past = {**{k: v for k, v in past.items() if k in wanted}, "input_ids": dec_ids[:, -1:]}
        if "encoder_hidden_states" in wanted:
            with_past["encoder_hidden_states"] = hidden
        with_past["encoder_attention_mask"] = np_feeds["attention_mask"]
        names = [o.name for o in sessions.decoder_with_past.get_outputs()]
        step = dict(zip(names, sessions.decoder_with_past.run(None, with_past), strict=True))
        diffs.append(output_diff("decoder_with_past.logits", step["logits"], logits[:, -1:]))
        cache = out.past_key_values
        for i in range(len(cache.self_attention_cache.layers)):
            layer = cache.self_attention_cache.layers[i]
            for kind, ref in (("key", layer.keys), ("value", layer.values)):
                diffs.append(
                    output_diff(
                        f"present.{i}.decoder.{kind}", step[f"present.{i}.decoder.{kind}"], ref.numpy()
                    )
                )
    return worst_per_output(diffs)


def seq2seq_manifest(directory: Path, checkpoint: Checkpoint, max_length: int) -> dict[str, Any]:
    """What serve needs: the three graphs with their inputs/outputs, special ids, cache geometry, the
    generation defaults and the --source-prefix the model was trained with."""
    from .manifest import _generation_config, graph_of, lora_fields, versions

    graphs = {k: graph_of(directory / f) for k, f in GRAPHS.items()}
    config = {
        **_generation_config(checkpoint),
        **{k: v for k, v in checkpoint.config.items() if v is not None},
    }
    past = [i for i in graphs["decoder_with_past"].graph.input if i.name.startswith("past_key_values.")]
    dims = [d.dim_value or None for d in past[0].type.tensor_type.shape.dim]
    for key in ("decoder_start_token_id", "eos_token_id"):
        if not isinstance(config.get(key), int):
            raise InputError(f"{checkpoint.path}/config.json: no {key}, so generation could not start/stop")
    gen = _generation_config(checkpoint)
    manifest = {
        "format": 1,
        "task": SEQ2SEQ_TASK,
        "problem_type": None,
        "model_type": config.get("model_type"),
        "labels": [],
        "max_length": max_length,
        "text_column": train_setting(checkpoint, "source_column"),
        "text_pair_column": None,
        "source_prefix": train_setting(checkpoint, "source_prefix") or "",
        "inference_api_key": inference_api_key(checkpoint),
        "opset": next(
            (o.version for o in graphs["encoder"].opset_import if o.domain in ("", "ai.onnx")), None
        ),
        "files": dict(GRAPHS),
        "inputs": {k: [i.name for i in g.graph.input] for k, g in graphs.items()},
        "outputs": {k: [o.name for o in g.graph.output] for k, g in graphs.items()},
        "generation": {
            "decoder_start_token_id": config["decoder_start_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config.get("pad_token_id"),
            "forced_bos_token_id": config.get("forced_bos_token_id"),
            "forced_eos_token_id": config.get("forced_eos_token_id"),
            "num_layers": sum(1 for i in past if i.name.endswith(".decoder.key")),
            "num_heads": int(dims[1]),
            "head_dim": int(dims[3]),
            "max_length": gen.get("max_length") or train_setting(checkpoint, "generation_max_length") or 128,
            "num_beams": gen.get("num_beams") or train_setting(checkpoint, "num_beams") or 1,
        },
        "source_checkpoint": str(checkpoint.path.resolve()),
        "versions": versions(),
    }
    if checkpoint.is_lora:
        manifest["lora"] = lora_fields(checkpoint)
    return manifest


def inference_api_key(checkpoint: Checkpoint) -> str:
    """The key of the Inference API's answer on `POST /`: translation_text for a model trained on parallel
    files or with a "translate" prefix, summary_text for a "summarize" prefix, else generated_text
    (text2text-generation's shape)."""
    prefix = (train_setting(checkpoint, "source_prefix") or "").lower()
    train = str(train_setting(checkpoint, "train") or "")
    if "summar" in prefix:
        return "summary_text"
    parts = train.split(":")
    tables = ("", ".csv", ".tsv", ".jsonl", ".json", ".parquet")  # "" : a hub dataset NAME:SPLIT
    parallel = len(parts) == 2 and all(Path(p).suffix.lower() not in tables for p in parts)
    return "translation_text" if "translat" in prefix or parallel else "generated_text"


def build_seq2seq(
    ckpt: Checkpoint,
    work: Path,
    scratch: Path,
    say: Callable[[str], None],
    *,
    atol: float,
    opset: int | None,
    max_length: int,
    texts: list[str] | None,
    optimize: str | None,
    quantize: str | None,
    eval_set,
):
    """export/onnx.py's _build for the three seq2seq graphs: export, validate, assemble, seal."""
    from .convert import exportable_model_dir, quiet
    from .manifest import seal
    from .onnx import ExportReport

    for flag, value in (("--optimize", optimize), ("--quantize", quantize), ("--eval-file", eval_set)):
        if value is not None:
            raise InputError(f"{flag} is not supported for {SEQ2SEQ_TASK} bundles yet")
    positions = ckpt.config.get("max_position_embeddings")  # BART / Marian: learned positions
    if isinstance(positions, int) and positions > STEPS + 1:
        max_length = min(max_length, positions)
    model_dir = exportable_model_dir(ckpt, scratch, say)
    say(f"exporting {SEQ2SEQ_TASK} with Optimum (opset {opset or 'default'})")
    onnx_dir = export_seq2seq(model_dir, scratch / "optimum", opset)
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    with quiet():
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = texts or validation_texts(model_dir / "tokenizer.json", None, max_length)
    say(f"validating against PyTorch on {len(texts)} texts")
    diffs = compare_seq2seq(model, tokenizer, onnx_dir, texts, max_length)
    check_tolerance(diffs, atol, str(ckpt.path), len(texts))
    for name in (*GRAPHS.values(), *SIDE_FILES, "generation_config.json"):
        source = onnx_dir / name if (onnx_dir / name).is_file() else model_dir / name
        if source.is_file():
            shutil.copy2(source, work / name)
    manifest = seq2seq_manifest(work, ckpt, max_length)
    validation = {
        "atol": atol,
        "num_samples": len(texts),
        "inputs": "generated",
        "max_abs_diff": max(d.max_abs for d in diffs),
        "outputs": {d.name: d.as_dict() for d in diffs},
    }
    manifest.update(optimization=None, quantization=None, validation=validation)
    seal(work, manifest)
    weights = sorted(model_dir.glob("*.safetensors"))
    models = [
        {
            "model": "PyTorch",
            "file": ", ".join(w.name for w in weights),
            "size_bytes": sum(w.stat().st_size for w in weights),
        },
        {
            "model": "ONNX fp32",
            "file": "3 graphs",
            "size_bytes": sum((work / f).stat().st_size for f in GRAPHS.values()),
        },
    ]
    return ExportReport(work, validation["max_abs_diff"], len(texts), manifest, diffs, models, None)
