"""One onnxruntime session per bundle: provider choice, thread counts, and IOBinding on CUDA."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import ServeError

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_providers(device: str = "auto") -> list[str]:
    """CUDA first when onnxruntime offers it (or when asked), then CPU."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ServeError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ServeError(
            "--device cuda: this onnxruntime has no CUDA provider "
            "(install the gpu extra: pip install -e '.[gpu]')"
        )
    if device == "cpu" or CUDA not in available:
        return [CPU]
    return [CUDA, CPU]


def _return_freed_memory() -> None:
    """Loading a model parses the whole file and frees it again; glibc keeps such freed pages unless asked."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class OnnxModel:
    """An InferenceSession plus the way to call it: plain `run` on CPU, IOBinding on CUDA.

    `run` takes numpy feeds (and optionally OrtValues already on the device, such as past key/values)
    and returns a dict of outputs: numpy arrays, except the names in `keep_on_device`, which stay
    OrtValues so a decoder's cache never travels to the host between steps.
    """

    def __init__(
        self,
        model_file,
        *,
        threads: int | None = None,
        device: str = "auto",
        io_binding: bool | None = None,
        spinning: bool = True,
    ):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or usable_cores()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not spinning:  # idle pool threads sleep instead of busy-waiting: the server needs those cores
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(device)
        try:
            self.session = ort.InferenceSession(str(model_file), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for a bad model file
            raise ServeError(f"{model_file}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        _return_freed_memory()
        self.threads = opts.intra_op_num_threads
        self.providers = self.session.get_providers()
        self.on_cuda = self.providers[0] == CUDA
        self.io_binding = self.on_cuda if io_binding is None else io_binding
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = list(self.inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def input_dtype(self, name: str) -> np.dtype:
        return np.float16 if self.inputs[name].type == "tensor(float16)" else np.float32

    def empty(self, shape: tuple[int, ...], name: str) -> Any:
        """A zero-filled input (used for an empty past) as the run call expects it."""
        return np.zeros(shape, dtype=self.input_dtype(name))

    def run(self, feeds: Mapping[str, Any], *, keep_on_device: Iterable[str] = ()) -> dict[str, Any]:
        keep = set(keep_on_device)
        if not self.io_binding:
            feeds = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in feeds.items()}
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=False))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        device = "cuda" if self.on_cuda else "cpu"
        for name in self.output_names:
            binding.bind_output(name, device if name in keep else "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        named = zip(self.output_names, outputs, strict=False)
        return {name: value if name in keep else value.numpy() for name, value in named}
