"""The unsupervised half of the joint loss L = L_sup + λ·L_unsup.

Encoders: masked-LM on the same batch's text, through an MLM head that shares the classifier's encoder
(the head is trained along and dropped from the saved checkpoint). Decoders: the LM loss on the prompt
tokens that the supervised loss masks out.
"""

from __future__ import annotations

import torch

from .errors import InputError


class MaskedLMObjective(torch.nn.Module):
    def __init__(
        self, model_path: str, supervised_model: torch.nn.Module, tokenizer, mask_prob: float = 0.15
    ):
        super().__init__()
        import transformers
        from transformers import AutoModelForMaskedLM

        transformers.logging.set_verbosity_error()
        try:
            mlm = AutoModelForMaskedLM.from_pretrained(model_path)
        except (OSError, ValueError) as e:
            raise InputError(
                f"--unsup-weight: no masked-LM head for {model_path} ({str(e).splitlines()[0]})"
            ) from None
        prefix = supervised_model.base_model_prefix
        setattr(mlm, prefix, getattr(supervised_model, prefix))  # one encoder, two heads
        mlm.tie_weights()
        self.mlm = mlm
        self.mask_id = tokenizer.mask_token_id
        if self.mask_id is None:
            raise InputError(f"--unsup-weight: the tokenizer of {model_path} has no mask token")
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.vocab_size = mlm.config.vocab_size
        self.mask_prob = mask_prob

    def head_parameters(self):
        prefix = self.mlm.base_model_prefix
        return [p for n, p in self.mlm.named_parameters() if not n.startswith(prefix + ".")]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        special = torch.isin(ids, self.special_ids.to(ids.device)) | (batch["attention_mask"] == 0)
        chosen = (torch.rand(ids.shape, device=ids.device) < self.mask_prob) & ~special
        labels = ids.masked_fill(~chosen, -100)
        roll = torch.rand(ids.shape, device=ids.device)
        masked = ids.masked_fill(chosen & (roll < 0.8), self.mask_id)  # BERT's 80 / 10 / 10
        random_ids = torch.randint(self.vocab_size, ids.shape, device=ids.device)
        masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
        inputs = {k: v for k, v in batch.items() if k in ("attention_mask", "token_type_ids")}
        if not chosen.any():
            return ids.new_zeros((), dtype=torch.float32)
        return self.mlm(input_ids=masked, labels=labels, **inputs).loss


def prompt_lm_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Targets for the prompt tokens only (the response is the supervised loss's)."""
    labels = batch["input_ids"].masked_fill((batch["labels"] != -100) | (batch["attention_mask"] == 0), -100)
    if "position_ids" in batch:
        labels = labels.masked_fill(batch["position_ids"] == 0, -100)  # no target across packed sequences
    return labels
