"""What is being exported: a checkpoint directory (or a LoRA adapter over one), checked before any model
loads.

Every check here reads only small files (config.json, tokenizer.json's presence, safetensors headers), so a
bad input fails in well under a second with one line naming the file at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.errors import InputError

TASKS = (
    "text-classification",
    "token-classification",
    "text-generation-with-past",
    "image-classification",
    "question-answering",
    "text2text-generation-with-past",
)
TASK_ALIASES = {  # sft-train's task names, and Optimum's name for a decoder without the "-with-past"
    "sequence-classification": "text-classification",
    "causal-lm": "text-generation-with-past",
    "text-generation": "text-generation-with-past",
    "seq2seq": "text2text-generation-with-past",
    "text2text-generation": "text2text-generation-with-past",
}
TASK_BY_ARCHITECTURE_SUFFIX = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForCausalLM": "text-generation-with-past",
    "ForImageClassification": "image-classification",
    "ForQuestionAnswering": "question-answering",
    "ForConditionalGeneration": "text2text-generation-with-past",  # T5, BART, Pegasus
    "MTModel": "text2text-generation-with-past",  # Marian
}
TASK_BY_PEFT_TYPE = {
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "CAUSAL_LM": "text-generation-with-past",
    "QUESTION_ANS": "question-answering",
    "SEQ_2_SEQ_LM": "text2text-generation-with-past",
}
IMAGE_TASK = "image-classification"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class Checkpoint:
    """A checkpoint as the user named it. For a LoRA adapter, `base` is the model it adapts, `config` the
    base's config (with the adapter directory's config.json on top when it has one)."""

    path: Path
    config: dict[str, Any]
    task: str
    tokenizer_dir: Path
    base: Path | None = None
    adapter_config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_lora(self) -> bool:
        return self.base is not None

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")


def inspect_checkpoint(path: str | Path, task: str | None = None) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint directory not found")
    if not path.is_dir():
        raise InputError(f"{path}: not a directory (expected an sft-train / Hugging Face checkpoint)")
    if (path / "adapter_config.json").is_file():
        return _inspect_adapter(path, task)
    config = _read_config(path)
    _check_weights(path, WEIGHT_FILES, "model weights (model.safetensors)")
    task = resolve_task(path, config, task)
    _require_preprocessing(path, task)
    return Checkpoint(path, config, task, tokenizer_dir=path)


def _inspect_adapter(path: Path, task: str | None) -> Checkpoint:
    adapter_config = _read_json(path / "adapter_config.json")
    if adapter_config.get("peft_type") not in (None, "LORA"):
        raise InputError(
            f"{path}/adapter_config.json: peft_type {adapter_config.get('peft_type')!r} is not "
            f"supported (only LoRA adapters can be merged)"
        )
    _check_weights(path, ADAPTER_WEIGHT_FILES, "adapter weights (adapter_model.safetensors)")
    base = _base_dir(path, adapter_config.get("base_model_name_or_path"))
    config = _read_config(base)
    _check_weights(base, WEIGHT_FILES, "model weights (model.safetensors)")
    if (path / "config.json").is_file():  # e.g. the labels of the head trained with the adapter
        config = {**config, **_read_json(path / "config.json")}
    peft_task = TASK_BY_PEFT_TYPE.get(adapter_config.get("task_type") or "")
    task = resolve_task(path, config, task or peft_task)
    wanted = IMAGE_PROCESSOR_FILE if task == IMAGE_TASK else "tokenizer.json"
    tokenizer_dir = path if (path / wanted).is_file() else base
    _require_preprocessing(tokenizer_dir, task, also_looked_in=path if tokenizer_dir != path else None)
    return Checkpoint(
        path,
        config,
        task,
        tokenizer_dir=tokenizer_dir,
        base=base,
        adapter_config=adapter_config,
    )


def _base_dir(adapter: Path, name: Any) -> Path:
    where = f"{adapter}/adapter_config.json: base_model_name_or_path"
    if not isinstance(name, str) or not name:
        raise InputError(f"{where} is missing")
    for candidate in (Path(name), adapter / name):
        if (candidate / "config.json").is_file():
            return candidate
    raise InputError(
        f"{where} {name!r} is not a local checkpoint directory (export runs offline; "
        f"point it at the base model's directory)"
    )


def _read_config(path: Path) -> dict[str, Any]:
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a checkpoint (no config.json)")
    return _read_json(path / "config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _require_preprocessing(path: Path, task: str, also_looked_in: Path | None = None) -> None:
    """tokenizer.json for the text tasks, the image processor's preprocessor_config.json for images."""
    if task != IMAGE_TASK:
        _require_tokenizer(path, also_looked_in)
    elif not (path / IMAGE_PROCESSOR_FILE).is_file():
        where = f"{also_looked_in} or {path}" if also_looked_in else str(path)
        raise InputError(f"{where}: no {IMAGE_PROCESSOR_FILE} (the image processor's settings)")


def _require_tokenizer(path: Path, also_looked_in: Path | None = None) -> None:
    if not (path / "tokenizer.json").is_file():
        where = f"{also_looked_in} or {path}" if also_looked_in else str(path)
        raise InputError(f"{where}: no tokenizer.json (a fast tokenizer is needed for serving)")


def _check_weights(path: Path, names: tuple[str, ...], what: str) -> None:
    present = [path / n for n in names if (path / n).is_file()]
    if not present:
        raise InputError(f"{path}: no {what}")
    for f in present:
        if f.name.endswith(".safetensors"):
            check_safetensors(f)
        elif f.name.endswith(".index.json"):
            shards = sorted(set(_read_json(f).get("weight_map", {}).values()))
            for shard in shards:
                if not (path / shard).is_file():
                    raise InputError(f"{f}: lists shard {shard}, which is missing")
                check_safetensors(path / shard)


def check_safetensors(path: Path) -> None:
    """The header's tensor offsets must account for the file's exact size (a cut-off download does not)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if header_len < 2 or 8 + header_len > size:
            raise InputError(f"{path}: not a valid safetensors file (truncated or corrupt header)")
        try:
            header = json.loads(f.read(header_len))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
            raise InputError(f"{path}: not a valid safetensors file (unreadable header)") from None
    expected = 8 + header_len + end
    if size != expected:
        raise InputError(
            f"{path}: truncated or corrupt safetensors file ({size} bytes, its header describes {expected})"
        )


def resolve_task(path: Path, config: dict[str, Any], requested: str | None) -> str:
    if requested:
        task = TASK_ALIASES.get(requested, requested)
        if task not in TASKS:
            raise InputError(f"--task {requested!r}: choose one of {', '.join(TASKS)}")
        return task
    for arch in config.get("architectures") or []:
        for suffix, task in TASK_BY_ARCHITECTURE_SUFFIX.items():
            if arch.endswith(suffix):
                return task
    raise InputError(
        f"{path}/config.json: architectures {config.get('architectures')} are not supported "
        f"(supported: *{', *'.join(TASK_BY_ARCHITECTURE_SUFFIX)}; or name one with --task)"
    )


def check_exportable(checkpoint: Checkpoint) -> None:
    """Optimum must know an ONNX export of this model type for this task (imports optimum: a few seconds)."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    model_type = checkpoint.model_type
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(
            model_type, "onnx", library_name="transformers"
        )
    except KeyError:
        raise InputError(
            f"{checkpoint.path}/config.json: model_type {model_type!r} has no ONNX export in Optimum"
        ) from None
    if checkpoint.task not in tasks:
        raise InputError(
            f"{checkpoint.path}: Optimum cannot export model_type {model_type!r} for "
            f"{checkpoint.task} (it can: {', '.join(t for t in tasks if t in TASKS) or 'none of ours'})"
        )


def max_length_of(checkpoint: Checkpoint) -> int:
    """The max_length the model was trained with (train_config.yaml), else the tokenizer's, capped at 512."""
    value = train_setting(checkpoint, "max_length")
    if isinstance(value, int) and value > 0:
        return value
    tok_cfg = checkpoint.tokenizer_dir / "tokenizer_config.json"
    if tok_cfg.is_file():
        value = _read_json(tok_cfg).get("model_max_length")
        if isinstance(value, int) and value > 0:
            return min(value, 512)
    return 512


def train_setting(checkpoint: Checkpoint, key: str) -> Any:
    """A field of the sft-train config saved with the checkpoint (the adapter's, then the base's), or None."""
    import yaml

    for d in (checkpoint.path, checkpoint.base):
        f = d / "train_config.yaml" if d else None
        if f is not None and f.is_file():
            try:
                data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise InputError(f"{f}: malformed YAML ({str(e).splitlines()[0]})") from None
            if isinstance(data, dict) and data.get(key) is not None:
                return data[key]
    return None
