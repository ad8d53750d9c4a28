"""Benchmarks: kernels against PyTorch/torch.compile/Liger, runtimes against each other. Run via sft-bench."""
