"""The Hugging Face Trainer arm of the comparisons: sft-train's batch order (so a comparison measures the
loops, not the order) and the arguments of a quiet, timed run."""

from __future__ import annotations


def same_order_trainer(trainer_cls: type, batch_size: int, seed: int) -> type:
    """A subclass of `trainer_cls` (Trainer, Seq2SeqTrainer) whose training sampler yields sft-train's
    BatchOrder batches, flattened: the Trainer's DataLoader cuts them back into the same batches."""
    from torch.utils.data import Sampler

    from sft.recipe import BatchOrder

    class SftOrder(Sampler):
        def __init__(self, n: int):
            self.n, self.epoch, self.order = n, 0, BatchOrder(n, batch_size, seed)

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return self.n

        def __iter__(self):
            batches = self.order.epoch_batches(self.epoch)
            self.epoch += 1  # for loaders that do not call set_epoch
            return iter([i for b in batches for i in b])

    class SameOrderTrainer(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            return SftOrder(len(train_dataset if train_dataset is not None else self.train_dataset))

    return SameOrderTrainer


def timed_run_args(args_cls: type, *, seed: int, **settings):
    """`args_cls` (TrainingArguments, Seq2SeqTrainingArguments) for a timed run: linear schedule, `seed` for
    init and data, no checkpoints, evaluation, reporting, progress bar or loader workers; `settings` on
    top."""
    import tempfile

    import torch

    base = {
        "output_dir": tempfile.mkdtemp(prefix="hf-trainer-"),
        "lr_scheduler_type": "linear",
        "seed": seed,
        "data_seed": seed,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 50,
        "report_to": [],
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    return args_cls(**{**base, **settings})
