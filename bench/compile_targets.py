"""Launch variants for the ahead-of-time compile audit (``bench.compile``).

A :class:`Scenario` is one way the Python launch code calls the kernels (dtype, head dim, causal, varlen,
dropout, GQA, TMA, the cross-entropy flags). :func:`capture` runs that launch code for real on ``meta``
tensors (shapes, strides and dtypes without storage) with the kernel launches intercepted, so the audit sees
exactly the arguments, constexprs and autotune lists a GPU run would, for the GPU named by ``capability``.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "attn" | "ce" | "scale"
    dtype: str = "bf16"
    head_dim: int = 128
    causal: bool = True
    varlen: bool = False
    dropout: bool = False
    group: int = 4  # q heads per kv head (1 = MHA)
    tma: bool = True  # TMA descriptors where the GPU has them (False: strides that rule TMA out)
    seqlen: int = 2048
    vocab: int = 128256
    ce_flags: tuple = ()  # "weight", "smoothing", "zloss", "softcap", "grad", "grad_scale"
    gate: bool = False  # part of the representative subset the CI gate compiles
    tags: dict = field(default_factory=dict, compare=False)


def _attn(name, gate=False, **kw) -> Scenario:
    return Scenario(name=name, kind="attn", gate=gate, **kw)


def _ce(name, gate=False, **kw) -> Scenario:
    return Scenario(name=name, kind="ce", gate=gate, **kw)


def scenarios(full: bool) -> list[Scenario]:
    """The representative subset (``full=False``: what training uses; the CI gate) or the whole matrix."""
    rep = [
        # Llama / Qwen2 / Mistral fine-tuning on padded batches: varlen, causal, GQA, head dim 128
        _attn("attn bf16 d128 causal varlen GQA", gate=True, varlen=True),
        # attention dropout (dense path)
        _attn("attn bf16 d128 causal dropout", gate=True, dropout=True),
        # BERT / RoBERTa / DistilBERT: padded -> varlen, bidirectional, MHA, head dim 64
        _attn("attn bf16 d64 varlen MHA", gate=True, head_dim=64, causal=False, varlen=True, group=1),
        # Gemma-style head dim 256
        _attn("attn bf16 d256 causal", gate=True, head_dim=256),
        # fp32 training of a small encoder
        _attn(
            "attn fp32 d64 varlen MHA",
            gate=True,
            dtype="fp32",
            head_dim=64,
            causal=False,
            varlen=True,
            group=1,
        ),
        _ce(
            "ce bf16 V=128256 all flags",
            gate=True,
            ce_flags=("weight", "smoothing", "zloss", "softcap", "grad"),
        ),
        _ce("ce fp32 V=2 smoothing", gate=True, dtype="fp32", vocab=2, ce_flags=("smoothing", "grad")),
        Scenario(name="scale bf16 rows", kind="scale", dtype="bf16", vocab=128256, gate=True),
        # not in the gate (slow to compile, or a path training does not take by default)
        _attn("attn fp32 d128 causal", dtype="fp32"),
        _attn("attn bf16 d128 causal no-TMA", tma=False),
    ]
    if not full:
        return rep
    out = list(rep)
    seen = {(s.kind, s.dtype, s.head_dim, s.causal, s.varlen, s.dropout, s.group == 1, s.tma) for s in rep}
    for dtype in ("bf16", "fp16", "fp32"):
        for d in (64, 96, 128, 256):
            for causal in (False, True):
                for varlen in (False, True):
                    for dropout in (False, True):
                        for group in (1, 4):
                            key = ("attn", dtype, d, causal, varlen, dropout, group == 1, True)
                            if key in seen:
                                continue
                            seen.add(key)
                            name = (
                                f"attn {dtype} d{d}{' causal' if causal else ''}{' varlen' if varlen else ''}"
                                f"{' dropout' if dropout else ''} {'MHA' if group == 1 else 'GQA'}"
                            )
                            out.append(
                                _attn(
                                    name,
                                    dtype=dtype,
                                    head_dim=d,
                                    causal=causal,
                                    varlen=varlen,
                                    dropout=dropout,
                                    group=group,
                                )
                            )
    for d in (64, 256):
        out.append(_attn(f"attn bf16 d{d} causal no-TMA", head_dim=d, tma=False))
    for dtype in ("fp16", "fp32"):
        out.append(
            _ce(
                f"ce {dtype} V=50257 all flags",
                dtype=dtype,
                vocab=50257,
                ce_flags=("weight", "smoothing", "zloss", "softcap", "grad", "grad_scale"),
            )
        )
    out.append(_ce("ce bf16 V=9 (CoNLL head)", vocab=9, ce_flags=("grad",)))
    out.append(_ce("ce bf16 V=128256 no grad", ce_flags=()))
    return out


# --------------------------------------------------------------------------------------------------------
# Capturing the launches
# --------------------------------------------------------------------------------------------------------


@dataclass
class Launch:
    """One kernel launch as the Python code made it: the JIT function, its keyword arguments (tensors are
    meta tensors) and the autotune configs it would try (``None``: a plain launch, options in kwargs)."""

    kernel: str
    fn: object
    kwargs: dict
    configs: list | None
    kept: list | None


def _meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


@contextlib.contextmanager
def _intercept(launches: list):
    """Record ``kernel[grid](...)`` launches instead of running them (and autotune lists after pruning)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    def jit_run(self, *args, grid, warmup, **kwargs):
        assert not args, f"{self.fn.__name__}: the audit expects keyword-only launches"
        launches.append(Launch(self.fn.__name__, self, dict(kwargs), None, None))

    def tuner_run(self, *args, **kwargs):
        assert not args, f"{self.base_fn.__name__}: the audit expects keyword-only launches"
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        self.nargs = {}
        kept = self.prune_configs(kwargs)
        launches.append(Launch(self.base_fn.__name__, self.fn, dict(kwargs), list(self.configs), list(kept)))
        self.nargs = None

    from triton.runtime.interpreter import InterpretedFunction

    saved = (JITFunction.run, Autotuner.run, InterpretedFunction.run)
    JITFunction.run = InterpretedFunction.run = jit_run  # (interpreted: the table checks in the test suite)
    Autotuner.run = tuner_run
    try:
        yield
    finally:
        JITFunction.run, Autotuner.run, InterpretedFunction.run = saved


@contextlib.contextmanager
def _as_gpu(capability: int, smem_bytes: int, tma: bool):
    """Make the launch code compile and prune for a GPU of this capability (``kernels.tuning.TARGET``).

    Kernels older than ``kernels.tuning`` (the "before" audit) are driven the old way: autotuning forced on,
    TMA forced for sm_90+ unless the scenario rules it out."""
    from kernels import attention_bwd, attention_fwd

    tuning = getattr(attention_fwd, "tuning", None)
    if tuning is not None:
        saved = tuning.TARGET
        tuning.TARGET = tuning.Target(capability, smem_bytes)
        try:
            yield
        finally:
            tuning.TARGET = saved
        return
    saved = (attention_fwd.use_autotune, attention_bwd.use_autotune, attention_fwd.FORCE_TMA)
    attention_fwd.use_autotune = attention_bwd.use_autotune = lambda device: True
    attention_fwd.FORCE_TMA = bool(tma and capability >= 90)
    try:
        yield
    finally:
        attention_fwd.use_autotune, attention_bwd.use_autotune, attention_fwd.FORCE_TMA = saved


def capture(sc: Scenario, capability: int, smem_bytes: int) -> tuple[list[Launch], str | None]:
    """The launches of scenario ``sc`` on a GPU of ``capability``; or ``([], message)`` when the launch code
    refuses the variant up front (a clear error instead of a kernel that cannot run)."""
    launches: list[Launch] = []
    try:
        with _as_gpu(capability, smem_bytes, sc.tma), _intercept(launches):
            {"attn": _launch_attention, "ce": _launch_ce, "scale": _launch_scale}[sc.kind](sc)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        return [], f"{type(exc).__name__}: {exc}"
    return launches, None


def _launch_attention(sc: Scenario) -> None:
    from kernels import attention_bwd, attention_fwd

    dtype = DTYPES[sc.dtype]
    hkv = 2 if sc.group > 1 else 8
    hq = hkv * sc.group
    b, s, d = 2, sc.seqlen, sc.head_dim
    # tma=False: rows padded by one element, a stride TMA descriptors cannot take (the pointer path on Hopper)
    pad = 0 if sc.tma else 1

    def qkv(*shape):
        return _meta(*shape[:-1], shape[-1] + pad, dtype=dtype)[..., : shape[-1]]

    if sc.varlen:
        t = b * s
        q, k, v = qkv(t, hq, d), qkv(t, hkv, d), qkv(t, hkv, d)
        lse = _meta(hq, t, dtype=torch.float32)
        cu = _meta(b + 1, dtype=torch.int32)
        seqlen, nbatch = 0, b
    else:
        q, k, v = qkv(b, s, hq, d), qkv(b, s, hkv, d), qkv(b, s, hkv, d)
        lse = _meta(b, hq, s, dtype=torch.float32)
        cu, seqlen, nbatch = None, s, b
    out = torch.empty_like(q)
    p = 0.1 if sc.dropout else 0.0
    seed = 2**40 + 12345 if sc.dropout else 0
    scale = d**-0.5
    common = dict(cu_seqlens=cu, seqlen=seqlen, nbatch=nbatch, max_seqlen=s, causal=sc.causal, sm_scale=scale)
    attention_fwd.attn_fwd(q, k, v, out, lse, dropout_p=p, seed=seed, **common)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    attention_bwd.attn_bwd(
        q,
        k,
        v,
        out,
        torch.empty_like(out),
        lse,
        dq,
        dk,
        dv,
        torch.empty_like(lse),
        dropout_p=p,
        seed=seed,
        **common,
    )


def _launch_ce(sc: Scenario) -> None:
    ce = importlib.import_module("kernels.cross_entropy")

    dtype = DTYPES[sc.dtype]
    n, v = 4096, sc.vocab
    logits = _meta(n, v, dtype=dtype)
    target = _meta(n, dtype=torch.int64)
    weight = _meta(v, dtype=torch.float32) if "weight" in sc.ce_flags else None
    stats = _meta(3, dtype=torch.float32)
    opts = ce._CEOptions(
        -100,
        0.1 if "smoothing" in sc.ce_flags else 0.0,
        1e-4 if "zloss" in sc.ce_flags else 0.0,
        30.0 if "softcap" in sc.ce_flags else None,
    )
    grad = torch.empty_like(logits) if "grad" in sc.ce_flags else None
    grad_scale = _meta(n, dtype=dtype) if "grad_scale" in sc.ce_flags else None
    loss, lse = _meta(n, dtype=torch.float32), _meta(n, dtype=torch.float32)
    ce._ce_rows_triton(logits, target, weight, stats, opts, grad, grad_scale, loss, lse)


def _launch_scale(sc: Scenario) -> None:
    ce = importlib.import_module("kernels.cross_entropy")

    dtype = DTYPES[sc.dtype]
    ce._scale_("triton", _meta(4096, sc.vocab, dtype=dtype), _meta((), dtype=dtype))
