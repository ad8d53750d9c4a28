"""Every sft-serve option, defined once: flag(s), environment variable, default and help.

The CLI builds its typer options from this table, the app reads a ServeOptions, and the load benchmark
takes its defaults from here too, so the three can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Token budgets per batch: on CPU bigger batches buy no throughput, only latency and memory.
CPU_MAX_BATCH_TOKENS, CUDA_MAX_BATCH_TOKENS = 4096, 16384
ENV_PREFIX = "SFT_SERVE_"


def _option(default: Any, help: str, *flags: str, show_default: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "flags": flags, "show_default": show_default})


@dataclass
class ServeOptions:
    host: str = _option("127.0.0.1", "Address to bind (loopback unless told otherwise).")
    port: int = _option(8080, "TCP port (0 picks a free one).")
    model_name: str | None = _option(
        None, "Model name on the /v2 (Open Inference Protocol) routes [default: the bundle directory's name]."
    )
    max_batch_tokens: int | None = _option(
        None,
        f"Most tokens (before padding) in one batch [default: {CPU_MAX_BATCH_TOKENS} on CPU, "
        f"{CUDA_MAX_BATCH_TOKENS} on CUDA].",
    )
    max_batch_requests: int = _option(
        64,
        "Most inputs in one batch (--max-batch-size is an alias).",
        "--max-batch-requests",
        "--max-batch-size",
    )
    max_queue_delay_ms: float = _option(
        2.0,
        "Longest an input waits for others to batch with (--max-wait-ms is an alias).",
        "--max-queue-delay-ms",
        "--max-wait-ms",
    )
    max_concurrent_requests: int = _option(512, "Requests in flight before new ones get 429.")
    max_client_batch_size: int = _option(256, "Most inputs in one request (more: 413).")
    max_body_bytes: int = _option(2 << 20, "Largest request body, chunked or not (more: 413).")
    auto_truncate: bool = _option(
        True,
        "Truncate inputs to the bundle's max_length; off: longer ones get 413 "
        '(a request\'s "truncate" field overrides).',
        "--auto-truncate/--no-auto-truncate",
    )
    max_new_tokens: int = _option(256, "Cap on max_new_tokens of a generation request.")
    api_key: str | None = _option(
        None,
        "Require 'Authorization: Bearer KEY' (not on the health probes). "
        "Prefer the environment variable: arguments show in ps.",
        show_default=False,
    )
    ssl_certfile: Path | None = _option(None, "TLS certificate (PEM): serve HTTPS.")
    ssl_keyfile: Path | None = _option(None, "TLS private key (PEM) of --ssl-certfile.")
    threads: int | None = _option(None, "onnxruntime intra-op threads [default: usable cores].")
    device: str = _option("auto", "auto (CUDA if available), cpu, cuda.")
    drain_timeout: float = _option(30.0, "Seconds to finish in-flight requests after SIGTERM.")
    header_timeout: float = _option(
        10.0, "Seconds a client has to send a request's headers (slow clients are dropped)."
    )
    body_timeout: float = _option(
        30.0, "Seconds a client has to send a request's body (slower ones are dropped)."
    )
    keep_alive_timeout: float = _option(60.0, "Seconds an idle keep-alive connection stays open.")
    verify: bool = _option(
        True, "Check every bundle file's sha256 against the manifest at start.", "--verify/--no-verify"
    )

    def batch_tokens(self, on_cuda: bool) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return CUDA_MAX_BATCH_TOKENS if on_cuda else CPU_MAX_BATCH_TOKENS


DEFAULTS = ServeOptions()


@dataclass(frozen=True)
class OptionSpec:
    name: str
    default: Any
    flags: tuple[str, ...]
    envvar: str
    help: str
    show_default: bool


def option_specs() -> list[OptionSpec]:
    return [
        OptionSpec(
            name=f.name,
            default=f.default,
            flags=f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",),
            envvar=ENV_PREFIX + f.name.upper(),
            help=f.metadata["help"],
            show_default=f.metadata["show_default"],
        )
        for f in fields(ServeOptions)
    ]
