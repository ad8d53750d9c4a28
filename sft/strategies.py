"""Fine-tuning strategies: which parameters train, and at which learning rate.

- freezing: `embeddings`, `bottom:K` (embeddings + the K lowest layers), `all-but-head`, or a regex over
  parameter names;
- gradual unfreezing (ULMFiT): start with the head only, unfreeze one more layer group from the top every
  N steps;
- discriminative (layer-wise) learning rates: lr * decay**depth from the top layer down, with separate
  head and embedding rates;
- LoRA through peft, merged into the base weights when the checkpoint is saved.

Layer groups are found from parameter names (`...layer.3...`, `...layers.3...`, `...h.3...`), which covers
BERT / RoBERTa / DistilBERT / Llama / Qwen2 / Mistral / GPT-2 style models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import InputError

_LAYER = re.compile(r"\.(?:stages|layer|layers|h|block|blocks)\.(\d+)\.")
_EMBED = re.compile(r"embed|wte|wpe|shared")


@dataclass
class LayerGroups:
    """Parameter names split into embeddings, numbered layers (bottom first) and the head (the rest)."""

    embeddings: list[str]
    layers: list[list[str]]
    head: list[str]

    def bottom_up(self) -> list[list[str]]:
        return [self.embeddings, *self.layers, self.head]


def layer_groups(model: torch.nn.Module) -> LayerGroups:
    embeddings, head = [], []
    layers: dict[int, list[str]] = {}
    for name, _ in model.named_parameters():
        m = _LAYER.search(name)
        if m:
            layers.setdefault(int(m.group(1)), []).append(name)
        elif _EMBED.search(name):
            embeddings.append(name)
        else:
            head.append(name)
    return LayerGroups(embeddings, [layers[i] for i in sorted(layers)], head)


def apply_freeze(model: torch.nn.Module, spec: str | None) -> list[str]:
    """Freeze parameters by `spec`; returns the frozen names. Freezing everything is an error."""
    if not spec:
        return []
    groups = layer_groups(model)
    if spec == "embeddings":
        frozen = set(groups.embeddings)
    elif spec == "all-but-head":
        frozen = set(groups.embeddings) | {n for layer in groups.layers for n in layer}
    elif spec.startswith("bottom:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise InputError(f"--freeze {spec}: expected bottom:K with an integer K") from None
        if not 0 <= k <= len(groups.layers):
            raise InputError(f"--freeze {spec}: the model has {len(groups.layers)} layers")
        frozen = set(groups.embeddings) | {n for layer in groups.layers[:k] for n in layer}
    else:
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise InputError(
                f"--freeze {spec!r}: not embeddings|bottom:K|all-but-head and not a valid regex ({e})"
            ) from None
        frozen = {n for n, _ in model.named_parameters() if pattern.search(n)}
        if not frozen:
            raise InputError(f"--freeze {spec!r}: the regex matches no parameter name")
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError(f"--freeze {spec}: every parameter would be frozen; nothing left to train")
    return sorted(frozen)


class GradualUnfreezer:
    """Train the head first, then unfreeze one more layer group from the top every `every` steps."""

    def __init__(self, model: torch.nn.Module, every: int):
        self.params = dict(model.named_parameters())
        self.stages = list(reversed(layer_groups(model).bottom_up()))  # head first
        self.every = every
        self.unfrozen = 0
        self._apply(1)

    def _apply(self, n: int) -> None:
        n = min(n, len(self.stages))
        if n == self.unfrozen:
            return
        for i, names in enumerate(self.stages):
            for name in names:
                self.params[name].requires_grad_(i < n)
        self.unfrozen = n

    def step(self, step: int) -> bool:
        """Call after optimizer step `step`; returns True when a new group was unfrozen."""
        before = self.unfrozen
        self._apply(1 + step // self.every)
        return self.unfrozen != before


def param_groups(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    *,
    layer_lr_decay: float = 1.0,
    head_lr: float | None = None,
    embedding_lr: float | None = None,
) -> list[dict]:
    """AdamW parameter groups: per layer-group learning rate, and no weight decay on 1-D parameters
    (biases, norms). Layer i of L gets lr * decay**(L - i); embeddings lr * decay**(L + 1) unless given."""
    groups = layer_groups(model)
    depth_lr: dict[str, float] = {}
    n_layers = len(groups.layers)
    for name in groups.head:
        depth_lr[name] = head_lr if head_lr is not None else lr
    for i, layer in enumerate(groups.layers):
        for name in layer:
            depth_lr[name] = lr * layer_lr_decay ** (n_layers - i)
    for name in groups.embeddings:
        depth_lr[name] = embedding_lr if embedding_lr is not None else lr * layer_lr_decay ** (n_layers + 1)

    # Frozen parameters get a slot too (gradual unfreezing turns them on later); AdamW skips
    # parameters whose .grad is None, so a slot costs nothing until then.
    buckets: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        wd = 0.0 if p.ndim < 2 else weight_decay
        key = (depth_lr[name], wd)
        bucket = buckets.setdefault(key, {"params": [], "names": [], "lr": key[0], "weight_decay": wd})
        bucket["params"].append(p)
        bucket["names"].append(name)
    return list(buckets.values())


def describe_param_groups(groups: list[dict]) -> list[str]:
    lines = [f"{'lr':>10} {'wd':>6} {'tensors':>8} {'params':>12}  first parameter"]
    for g in sorted(groups, key=lambda g: -g["lr"]):
        n = sum(p.numel() for p in g["params"])
        lines.append(
            f"{g['lr']:>10.2e} {g['weight_decay']:>6.3f} {len(g['params']):>8} {n:>12,}  {g['names'][0]}"
        )
    return lines


def apply_lora(
    model: torch.nn.Module, *, r: int, alpha: int, dropout: float, targets: list[str] | None, task_type: str
) -> torch.nn.Module:
    """Wrap `model` with LoRA adapters (peft). The classification head stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    if targets:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        supported = {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d))
        }
        for t in targets:
            if t not in names:
                raise InputError(f"--lora-targets {t}: no module of that name in the model")
            if t not in supported:
                raise InputError(
                    f"--lora-targets {t}: LoRA supports Linear / Embedding / Conv1d modules only"
                )
    extra = {}
    if task_type is None:  # no PEFT task type (image models): the task says what to adapt and keep
        from .vision import lora_settings

        settings = lora_settings(model)
        targets = targets or settings["target_modules"]
        extra["modules_to_save"] = settings["modules_to_save"]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets or "all-linear",
        task_type=task_type,
        **extra,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise InputError(f"--lora: {str(e).splitlines()[0]}") from None
