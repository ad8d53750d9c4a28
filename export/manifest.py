"""manifest.json: what serve needs to run a bundle without the checkpoint (the contract with
serve/bundle.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serve.bundle import sha256_file
from sft.errors import InputError

from .checkpoint import Checkpoint, train_setting
from .runners import GENERATION_TASK

BUNDLE_FORMAT = 1


def build_manifest(bundle: Path, checkpoint: Checkpoint, task: str, max_length: int) -> dict[str, Any]:
    """Every field but sha256 (added by `seal`, once the files are final) and the reports added later."""
    graph = graph_of(bundle / "model.onnx")
    config = checkpoint.config
    tok_cfg = _tokenizer_config(checkpoint)
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    manifest = {
        "format": BUNDLE_FORMAT,
        "task": task,
        "problem_type": (
            config.get("problem_type") or "single_label_classification"
            if task == "text-classification"
            else None
        ),
        "model_type": config.get("model_type"),
        "labels": [] if task == GENERATION_TASK else [id2label[i] for i in sorted(id2label)],
        "max_length": max_length,
        # the input columns sft-train read (train_config.yaml), sft-predict's defaults for files alike
        "text_column": train_setting(checkpoint, "text_column"),
        "text_pair_column": train_setting(checkpoint, "text_pair_column"),
        "pad_token": _pick(
            _token_string(tok_cfg.get("pad_token")), _padding_token(bundle / "tokenizer.json")
        ),
        "opset": next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": [i.name for i in graph.graph.input],
        "outputs": [o.name for o in graph.graph.output],
        "source_checkpoint": str(checkpoint.path.resolve()),
        "versions": versions(),
    }
    if checkpoint.is_lora:
        manifest["lora"] = lora_fields(checkpoint)
    if task == GENERATION_TASK:
        manifest["generation"] = generation_fields(graph, checkpoint, tok_cfg, bundle / "tokenizer.json")
    return manifest


def lora_fields(checkpoint: Checkpoint) -> dict[str, Any]:
    """The manifest's record of a LoRA checkpoint: merged into its base at export."""
    return {"base": str(checkpoint.base.resolve()), "adapter": str(checkpoint.path.resolve()), "merged": True}


def seal(bundle: Path, manifest: dict[str, Any]) -> None:
    """sha256 of every file in the bundle, then manifest.json itself."""
    from sft.atomic import write_json

    manifest["sha256"] = {
        f.name: sha256_file(f) for f in sorted(bundle.iterdir()) if f.is_file() and f.name != "manifest.json"
    }
    write_json(bundle / "manifest.json", manifest)


def graph_of(onnx_file: Path):
    import onnx

    return onnx.load(str(onnx_file), load_external_data=False)


def generation_fields(model, checkpoint: Checkpoint, tok_cfg: dict[str, Any], tokenizer_file: Path) -> dict:
    """Special token ids and cache geometry; the geometry is read off the graph's past inputs, which
    are what serve has to feed (batch, num_key_value_heads, past_length, head_dim)."""
    config = {
        **_generation_config(checkpoint),
        **{k: v for k, v in checkpoint.config.items() if v is not None},
    }
    pasts = [
        i for i in model.graph.input if i.name.startswith("past_key_values.") and i.name.endswith(".key")
    ]
    if not pasts:
        raise InputError(f"{checkpoint.path}: the exported graph has no past_key_values inputs")
    dims = [d.dim_value or None for d in pasts[0].type.tensor_type.shape.dim]
    heads = dims[1] or config.get("num_key_value_heads") or config.get("num_attention_heads")
    head_dim = dims[3] or config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    vocab = _vocab(tokenizer_file)
    eos, bos, pad = (
        _pick(
            _first_id(config.get(f"{kind}_token_id")), vocab.get(_token_string(tok_cfg.get(f"{kind}_token")))
        )
        for kind in ("eos", "bos", "pad")
    )
    if eos is None:
        raise InputError(
            f"{checkpoint.path}: no eos_token_id in config.json or the tokenizer, so generation "
            f"could not stop"
        )
    return {
        "eos_token_id": eos,
        "bos_token_id": bos,
        "pad_token_id": pad,
        "num_layers": len(pasts),
        "num_key_value_heads": int(heads),
        "head_dim": int(head_dim),
        "chat_template": _chat_template(checkpoint, tok_cfg),
    }


def _pick(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _first_id(value: Any) -> int | None:
    """Token ids may be lists (several EOS tokens); serve takes one."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _token_string(token: Any) -> str | None:
    if isinstance(token, dict):  # an AddedToken serialized into tokenizer_config.json
        token = token.get("content")
    return token if isinstance(token, str) else None


def _tokenizer_config(checkpoint: Checkpoint) -> dict[str, Any]:
    f = checkpoint.tokenizer_dir / "tokenizer_config.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def _generation_config(checkpoint: Checkpoint) -> dict[str, Any]:
    for d in (checkpoint.path, checkpoint.base):
        if d is not None and (d / "generation_config.json").is_file():
            return json.loads((d / "generation_config.json").read_text(encoding="utf-8"))
    return {}


def _chat_template(checkpoint: Checkpoint, tok_cfg: dict[str, Any]) -> str | None:
    template = tok_cfg.get("chat_template")
    if isinstance(template, str):
        return template
    jinja = checkpoint.tokenizer_dir / "chat_template.jinja"  # where newer transformers save it
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


def _vocab(tokenizer_file: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).get_vocab()


def _padding_token(tokenizer_file: Path) -> str | None:
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    return (data.get("padding") or {}).get("pad_token")


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "sft-toolchain",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "tokenizers",
        "peft",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
