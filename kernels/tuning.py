"""Which attention tile configs a GPU can run: per architecture, dtype, head dim and dropout.

The autotuners of ``kernels.attention_fwd`` / ``kernels.attention_bwd`` prune their config lists with
:func:`prune` before anything is compiled, so a config that does not fit the device's shared memory (or that
ptxas spills) is never tried, and :func:`check_supported` refuses, with a clear message, a launch no config
can serve (instead of an ``OutOfResources`` in the middle of a run).

The lists below come from the ahead-of-time compile audit (``python -m bench.compile``; results in
``bench/results/compile_audit_*``): every kept config of every audited launch variant compiles for sm_80 /
sm_90 within the architecture's shared memory, and at least one spills 0 bytes. On top of the lists, a
conservative shared-memory estimate drops configs that exceed the device's opt-in limit (99 KiB on sm_86 / 89
/ 120 GPUs: A10, L4, L40S, RTX cards).

The device is read from the tensors; ``TARGET`` overrides it (the audit prunes for GPUs it does not have).
Each kind of GPU gets its own autotuner (:func:`autotuner_per_gpu`), so a process driving two different GPUs
never reuses a tile chosen, and pruned, for the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A GPU as the pruning sees it: compute capability (``90`` = sm_90), opt-in shared memory per block."""

    capability: int
    smem_bytes: int


# Opt-in shared memory per block (bytes): A100 163 KiB; sm_86/87/89 and sm_120 99 KiB; H100/H200/B200 227 KiB.
SMEM_LIMITS = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}

# Set by the ahead-of-time audit to prune for a GPU that is not present.
TARGET: Target | None = None

# (BLOCK_M, BLOCK_N, num_warps, num_stages). Forward and dQ: BLOCK_M query rows stay in registers, BLOCK_N
# key rows stream. dK/dV: BLOCK_N key rows stay in registers (K, V and the fp32 dK, dV accumulators),
# BLOCK_M query rows stream.
Tile = tuple[int, int, int, int]

# Keys: (kernel, path, dtype class, head-dim block, dropout). path "tma" = Hopper+ with TMA descriptors,
# "ptr" = pointer loads (sm_80/86/89, or strides that rule TMA out). dtype class "16" = bf16/fp16, "32" = fp32
# (IEEE fp32 dot products, no tensor cores: small tiles; fp32 never takes the TMA path).
_FWD_16_SMALL_D = [(128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 32, 4, 4)]
_FWD_DROPOUT = [(128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)]
_DKDV_16_SMALL_D = [(32, 64, 8, 3), (16, 128, 8, 3), (32, 128, 8, 2), (32, 128, 8, 3), (16, 64, 4, 3)]
_DQ_16 = [(128, 32, 4, 3), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 32, 4, 4), (128, 32, 8, 4)]
_DQ_16_DROPOUT = [(128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 4), (128, 32, 8, 4), (64, 32, 4, 2)]

TABLES: dict[tuple, list[Tile]] = {
    # ---- forward ----
    ("fwd", "tma", "16", 64, False): _FWD_16_SMALL_D + [(128, 64, 4, 3), (128, 32, 4, 4)],
    ("fwd", "tma", "16", 64, True): _FWD_DROPOUT,
    ("fwd", "tma", "16", 128, False): _FWD_16_SMALL_D,
    ("fwd", "tma", "16", 128, True): [(64, 64, 4, 3), (64, 32, 4, 4)],
    ("fwd", "tma", "16", 256, False): [(64, 64, 4, 3), (64, 32, 4, 4), (64, 32, 8, 3)],
    ("fwd", "tma", "16", 256, True): [(64, 32, 8, 3), (64, 32, 4, 4)],
    ("fwd", "ptr", "16", 64, False): [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4)],
    ("fwd", "ptr", "16", 64, True): _FWD_DROPOUT,
    ("fwd", "ptr", "16", 128, False): [(64, 64, 4, 3), (64, 32, 4, 4)],
    ("fwd", "ptr", "16", 128, True): [(64, 32, 4, 4), (64, 32, 8, 3), (32, 32, 4, 3)],
    ("fwd", "ptr", "16", 256, False): [(64, 32, 8, 3), (64, 32, 8, 2), (32, 32, 4, 3)],
    ("fwd", "ptr", "16", 256, True): [(64, 32, 8, 2), (32, 32, 4, 3)],
    ("fwd", "ptr", "32", 64, False): [(32, 16, 4, 3)],
    ("fwd", "ptr", "32", 64, True): [(32, 16, 4, 3)],
    ("fwd", "ptr", "32", 128, False): [(32, 16, 4, 3)],
    ("fwd", "ptr", "32", 128, True): [(32, 16, 4, 3)],
    # ---- dK / dV ----
    ("dkdv", "tma", "16", 64, False): _DKDV_16_SMALL_D + [(64, 64, 8, 3), (64, 128, 8, 3)],
    ("dkdv", "tma", "16", 64, True): _DKDV_16_SMALL_D,
    ("dkdv", "tma", "16", 128, False): [(32, 64, 8, 3), (16, 64, 8, 3), (32, 64, 8, 2)],
    ("dkdv", "tma", "16", 128, True): [(16, 64, 8, 3)],
    ("dkdv", "ptr", "16", 64, False): _DKDV_16_SMALL_D,
    ("dkdv", "ptr", "16", 64, True): [(32, 64, 8, 3), (16, 64, 4, 3)],
    ("dkdv", "ptr", "16", 128, False): [(32, 64, 8, 3), (32, 32, 8, 3), (16, 32, 8, 3)],
    ("dkdv", "ptr", "16", 128, True): [(32, 32, 8, 3), (16, 32, 4, 3)],
    # head dim 256: every TMA-path config spills on sm_90 (the K, V tiles and the dK, dV accumulators of
    # 16+ rows do not fit next to the descriptors' registers); the pointer path at 32 rows does not spill
    ("dkdv", "ptr", "16", 256, False): [(32, 32, 8, 2), (16, 32, 8, 2)],
    ("dkdv", "ptr", "16", 256, True): [(32, 32, 8, 2), (16, 32, 8, 2)],
    ("dkdv", "ptr", "32", 64, False): [(32, 32, 4, 3), (16, 32, 4, 3)],
    ("dkdv", "ptr", "32", 64, True): [(32, 32, 4, 3), (16, 32, 4, 3)],
    ("dkdv", "ptr", "32", 128, False): [(32, 32, 8, 3)],
    ("dkdv", "ptr", "32", 128, True): [(32, 32, 8, 3)],
    # ---- dQ ----
    ("dq", "tma", "16", 64, False): _DQ_16,
    ("dq", "tma", "16", 64, True): _DQ_16_DROPOUT,
    ("dq", "tma", "16", 128, False): _DQ_16,
    ("dq", "tma", "16", 128, True): _DQ_16_DROPOUT,
    ("dq", "tma", "16", 256, False): [(64, 32, 4, 4), (64, 32, 8, 3)],
    ("dq", "tma", "16", 256, True): [(64, 32, 8, 3), (64, 32, 4, 4)],
    ("dq", "ptr", "16", 64, False): [t for t in _DQ_16 if t != (128, 32, 4, 3)],
    ("dq", "ptr", "16", 64, True): _DQ_16_DROPOUT,
    ("dq", "ptr", "16", 128, False): [(64, 32, 4, 4), (128, 32, 8, 4)],
    ("dq", "ptr", "16", 128, True): [(64, 32, 4, 4), (64, 32, 8, 3), (32, 32, 4, 3)],
    ("dq", "ptr", "16", 256, False): [(64, 32, 8, 3), (32, 32, 4, 3), (32, 32, 4, 2)],
    ("dq", "ptr", "16", 256, True): [(64, 32, 8, 2), (32, 32, 4, 3), (32, 32, 4, 2)],
    ("dq", "ptr", "32", 64, False): [(32, 32, 4, 3)],
    ("dq", "ptr", "32", 64, True): [(32, 32, 4, 3)],
    ("dq", "ptr", "32", 128, False): [(16, 32, 4, 3)],
    ("dq", "ptr", "32", 128, True): [(16, 32, 4, 3)],
}


def all_tiles(kernel: str) -> list[Tile]:
    """Every tile any table lists for ``kernel`` (the autotuner's config list, before pruning)."""
    seen: dict[Tile, None] = {}
    for (k, *_), tiles in TABLES.items():
        if k == kernel:
            seen.update(dict.fromkeys(tiles))
    return list(seen)


def target_of(device) -> Target:
    """The :class:`Target` of a CUDA device (or ``TARGET`` when set)."""
    if TARGET is not None:
        return TARGET
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or SMEM_LIMITS.get(10 * major + minor, 101376)
    return Target(10 * major + minor, int(smem))


def smem_estimate(kernel: str, tile: Tile, *, elt_bytes: int, block_d: int, dropout: bool) -> int:
    """Upper estimate of a config's shared memory (bytes): the streamed tiles times the pipeline stages, the
    resident tiles once (the TMA path stages them through shared memory), plus barriers. Matches the audit's
    TMA measurements within 2 KiB from above; the pointer path uses less."""
    bm, bn, _, stages = tile
    if kernel == "dkdv":
        resident, streamed = 2 * bn, 2 * bm  # K, V resident; Q, dO streamed
    else:
        resident, streamed = (bm if kernel == "fwd" else 2 * bm), 2 * bn  # Q (and dO) resident; K, V streamed
    est = elt_bytes * block_d * (resident + stages * streamed) + 2048
    return est + (4 * bm * bn if dropout else 0)


def _head_dim_class(block_d: int) -> int:
    return 64 if block_d <= 64 else block_d


def kernel_uses_tma(kernel: str, block_d: int, tma: bool) -> bool:
    """Whether ``kernel`` takes the TMA path when the tensors allow it: not dK/dV at head dim 256 (see the
    tables)."""
    return tma and not (kernel == "dkdv" and block_d > 128)


def tiles_for(
    kernel: str, target: Target, *, elt_bytes: int, block_d: int, dropout: bool, tma: bool
) -> list[Tile]:
    """The configs ``kernel`` ("fwd" | "dkdv" | "dq") may try on ``target`` (empty: none can run)."""
    path = "tma" if tma and elt_bytes < 4 else "ptr"
    key = (kernel, path, "32" if elt_bytes >= 4 else "16", _head_dim_class(block_d), bool(dropout))
    tiles = TABLES.get(key, [])
    return [
        t
        for t in tiles
        if smem_estimate(kernel, t, elt_bytes=elt_bytes, block_d=block_d, dropout=dropout)
        <= target.smem_bytes
    ]


def _launch_facts(kwargs: dict) -> tuple:
    q = kwargs["Q"]
    return q.element_size(), kwargs["BLOCK_D"], bool(kwargs["DROPOUT"]), bool(kwargs["USE_TMA"]), q.device


def prune(kernel: str):
    """An ``early_config_prune`` for the autotuner of ``kernel``: keeps the configs :func:`tiles_for` allows
    on the launch's device (the launch code has already refused the variants with none, see
    :func:`check_supported`)."""

    def _prune(configs, named_args, **kwargs):
        elt, block_d, dropout, tma, device = _launch_facts({**named_args, **kwargs})
        allowed = set(
            tiles_for(kernel, target_of(device), elt_bytes=elt, block_d=block_d, dropout=dropout, tma=tma)
        )
        kept = [
            c
            for c in configs
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in allowed
        ]
        if not kept:
            raise RuntimeError(
                f"no {kernel} attention config fits this GPU (check_supported should have refused)"
            )
        return kept

    return _prune


def autotuner_per_gpu(fn, *, kernel: str, configs: list, key: list[str]):
    """``device -> triton.autotune(...)(fn)``, one autotuner per :class:`Target`.

    Triton's autotuner caches its choice per ``key`` (plus the argument dtypes), not per device: a config
    picked on an H100 would be launched on an L4 in the same process without being pruned again."""
    import triton

    tuners: dict[Target, object] = {}

    def for_device(device):
        target = target_of(device)
        if target not in tuners:
            tuners[target] = triton.autotune(
                configs=configs, key=key, prune_configs_by={"early_config_prune": prune(kernel)}
            )(fn)
        return tuners[target]

    return for_device


def check_supported(*, device, dtype, head_dim: int, block_d: int, dropout: bool, tma: bool) -> None:
    """Raise ``ValueError`` naming the reason when no forward/backward config fits the GPU of ``device``."""
    import torch

    elt = torch.empty((), dtype=dtype).element_size()
    target = target_of(device)
    for kernel in ("fwd", "dkdv", "dq"):
        uses_tma = kernel_uses_tma(kernel, block_d, tma)
        if not tiles_for(kernel, target, elt_bytes=elt, block_d=block_d, dropout=dropout, tma=uses_tma):
            raise ValueError(
                f"flash_attention: no Triton {kernel} tile config for {str(dtype).replace('torch.', '')} "
                f"head dim {head_dim}{' with dropout' if dropout else ''} fits sm_{target.capability} "
                f"({target.smem_bytes // 1024} KiB shared memory per block) without spilling; use "
                + ("bf16/fp16 inputs or " if elt >= 4 else "")
                + "backend='torch'"
            )
