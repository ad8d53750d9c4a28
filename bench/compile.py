"""`sft-bench compile`: compile every Triton kernel launch ahead of time for GPUs this machine does not have.

For every launch variant the Python launch code produces (``bench.compile_targets``) and every autotune
config it would try, ``triton.compile`` builds the kernel for sm_80, sm_90 and sm_100 (no GPU needed: the
Triton wheel ships ptxas), and the audit records shared memory against the architecture's limit (and the
99 KiB limit of sm_86/89/120 GPUs for sm_80 code), registers, spill bytes (ptxas -v) and, on sm_90, whether
the attention kernels use wgmma and TMA instructions. It writes JSON and a Markdown table.

    python -m bench.compile [--full] [--gate] [--all-configs] [--archs 80,90] [--jobs N] [--out DIR] [--tag T]

``--gate`` exits 1 when a config fails to compile, when a launch variant is left without a kept config that
fits and spills 0 bytes, when a kept config does not fit the shared memory, or when an sm_90 attention kernel
meant to use wgmma does not. The default set is the representative subset (what training uses); ``--full``
adds the whole dtype x head dim x flags matrix. ``--all-configs`` also compiles the configs the pruning drops
(for the before/after comparison).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

ARCHS = (80, 90, 100)
SMEM_99K = 101376  # sm_86 / sm_89 / sm_120 opt-in shared memory per block
ATTN_KERNELS = ("_attn_fwd_kernel", "_attn_bwd_dkdv", "_attn_bwd_dq")
SHORT = {
    "_attn_fwd_kernel": "attn_fwd",
    "_attn_bwd_preprocess": "attn_bwd_preprocess",
    "_attn_bwd_dkdv": "attn_bwd_dkdv",
    "_attn_bwd_dq": "attn_bwd_dq",
    "_ce_fwd_kernel": "ce_fwd",
    "_scale_rows_kernel": "ce_scale_rows",
}


def smem_limit(capability: int) -> int:
    from kernels.tuning import SMEM_LIMITS

    return SMEM_LIMITS[capability]


def config_label(cfg: dict) -> str:
    """``128x64 w8 s3`` for attention tiles, ``BLOCK16384 w32 s3`` for the cross-entropy kernels."""
    kw, w, s = cfg["kwargs"], cfg["num_warps"], cfg["num_stages"]
    if "BLOCK_M" in kw and "BLOCK_N" in kw:
        return f"{kw['BLOCK_M']}x{kw['BLOCK_N']} w{w} s{s}"
    return " ".join(f"{k}{v}" for k, v in kw.items()) + f" w{w} s{s}"


# --------------------------------------------------------------------------------------------------------
# Compiling one config
# --------------------------------------------------------------------------------------------------------


def specialize(fn, kwargs: dict, cfg: dict, capability: int) -> dict:
    """What ``JITFunction.run`` would hand ``triton.compile`` for this launch on this GPU: signature,
    constexprs, attributes (divisibility/alignment specializations) and options; plain picklable data."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", capability, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    call = {**kwargs, **cfg["kwargs"], "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    call.setdefault("debug", False)
    bound, specialization, options = binder(**call)
    options, signature, constexprs, attrs = fn._pack_args(backend, call, bound, specialization, options)
    return {
        "module": fn.fn.__module__,
        "name": fn.fn.__name__,
        "signature": signature,
        "constexprs": constexprs,
        "attrs": attrs,
        "options": options.__dict__,
        "capability": capability,
    }


def _jit_fn(module: str, name: str):
    import importlib

    obj = getattr(importlib.import_module(module), name)
    while not hasattr(obj, "params"):  # autotuner / heuristics wrappers
        obj = obj.fn
    return obj


def _ptxas_stats(ptx: str, capability: int, timeout: float) -> dict:
    """Registers and spill bytes from ``ptxas -v`` with triton's options (the numbers a GPU run gets)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(capability).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        arch = sm_arch_from_capability(capability)
        cmd = [
            ptxas,
            "-lineinfo",
            "-v",
            "--regAllocOptLevel=2",
            f"--gpu-name={arch}",
            str(src),
            "-o",
            str(Path(tmp) / "k.o"),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {
                "regs": None,
                "spill_stores": None,
                "spill_loads": None,
                "stack": None,
                "ptxas": f"timeout {timeout:.0f} s",
            }
    if proc.returncode != 0:
        return {
            "regs": None,
            "spill_stores": None,
            "spill_loads": None,
            "stack": None,
            "ptxas": f"error: {proc.stderr.strip()[:200]}",
        }
    return {**_parse_ptxas_log(proc.stdout + proc.stderr), "ptxas": "ok"}


def _parse_ptxas_log(log: str) -> dict:
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return {
        "regs": int(regs.group(1)) if regs else None,
        "spill_stores": int(spill.group(1)) if spill else None,
        "spill_loads": int(spill.group(2)) if spill else None,
        "stack": int(stack.group(1)) if stack else None,
    }


CACHE_DIR = Path(os.environ.get("SFT_COMPILE_CACHE", Path.home() / ".cache" / "sft-bench" / "compile"))
USE_CACHE = True


def _compile_task(task):
    """compile_one behind a result cache keyed by the specialization, the kernel's source hash (triton's
    ``cache_key``: the function and every jit function it calls), the triton version and the ptxas timeout."""
    import hashlib

    import triton

    spec, limit, timeout = task
    fn = _jit_fn(spec["module"], spec["name"])
    key = hashlib.sha256(
        "|".join([_spec_key(spec), fn.cache_key, triton.__version__, str(limit), str(timeout)]).encode()
    ).hexdigest()
    path = CACHE_DIR / f"{key}.json"
    if not USE_CACHE:
        return compile_one(spec, limit, timeout)
    if path.exists():
        return {**json.loads(path.read_text()), "cached": True}
    res = compile_one(spec, limit, timeout)
    if res["status"] == "ok":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(res))
        os.replace(tmp, path)
    return res


def _to_ptx(spec: dict):
    """Run triton's compile pipeline (the same stages ``triton.compile`` runs) up to PTX: returns the PTX and
    the metadata (``shared`` is known once the LLVM IR is made). ptxas runs separately (see compile_one)."""
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    fn = _jit_fn(spec["module"], spec["name"])
    target = GPUTarget("cuda", spec["capability"], 32)
    backend = make_backend(target)
    options = backend.parse_options(dict(spec["options"]))
    src = ASTSource(fn, spec["signature"], spec["constexprs"], spec["attrs"])
    stages: dict = {}
    backend.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(
        target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context
    )
    metadata = {"hash": "audit", "target": target, **options.__dict__}
    names = list(stages)
    for ext in names[names.index(src.ext) : names.index("ptx") + 1]:
        module = stages[ext](module, metadata)
    return module, metadata


def compile_one(spec: dict, smem_limit: int | None = None, ptxas_timeout: float = 300.0) -> dict:
    """Compile one specialization to PTX and assemble it with ``ptxas -v`` (in a worker process); ptxas is
    skipped when the shared memory is already over ``smem_limit`` (the config cannot launch anyway)."""
    t0 = time.perf_counter()
    try:
        ptx, meta = _to_ptx(spec)
    except Exception as exc:  # a compile error is a finding, not a crash of the audit
        msg = [line for line in str(exc).strip().splitlines() if line.strip()]
        return {"status": "error", "error": (msg[0] if msg else type(exc).__name__)[:300], "seconds": 0.0}
    out = {
        "status": "ok",
        "shared": int(meta["shared"]),
        "wgmma": ptx.count("wgmma.mma_async"),
        "tma": ptx.count("cp.async.bulk.tensor"),
        "mma": len(re.findall(r"\bmma\.sync", ptx)),
        "tcgen05": ptx.count("tcgen05.mma"),
    }
    if smem_limit is not None and out["shared"] > smem_limit:
        out.update(
            regs=None, spill_stores=None, spill_loads=None, stack=None, ptxas="skipped: over shared memory"
        )
    else:
        out.update(_ptxas_stats(ptx, spec["capability"], ptxas_timeout))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


# --------------------------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------------------------


def _cfg_dict(cfg) -> dict:
    return {"kwargs": dict(cfg.kwargs), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def plan(full: bool, archs, all_configs: bool, only_gate: bool = False, only: tuple = ()):
    """(records without results, refusals): one record per (scenario, arch, launch, config) to compile."""
    from bench.compile_targets import capture, scenarios

    records, refusals = [], []
    for sc in scenarios(full):
        if (only_gate and not sc.gate) or (only and sc.name not in only):
            continue
        for cap in archs:
            if not sc.tma and cap < 90:
                continue  # the no-TMA variant is the sm_80 code path already
            launches, refused = capture(sc, cap, smem_limit(cap))
            if refused:
                refusals.append({"scenario": sc.name, "arch": cap, "message": refused})
                continue
            for ln in launches:
                if ln.configs is None:
                    opts = {k: ln.kwargs.pop(k) for k in ("num_warps", "num_stages") if k in ln.kwargs}
                    consts = {k: v for k, v in ln.kwargs.items() if k.startswith("BLOCK")}
                    cfgs = [
                        {
                            "kwargs": consts,
                            "num_warps": opts.get("num_warps", 4),
                            "num_stages": opts.get("num_stages", 3),
                        }
                    ]
                    kept = [True]
                    for k in consts:
                        ln.kwargs.pop(k)
                else:
                    kept_ids = {id(c) for c in ln.kept}
                    cfgs = [_cfg_dict(c) for c in ln.configs]
                    kept = [id(c) in kept_ids for c in ln.configs]
                for cfg, is_kept in zip(cfgs, kept, strict=True):
                    if not is_kept and not all_configs:
                        continue
                    records.append(
                        make_record(
                            scenario=sc.name,
                            arch=cap,
                            kernel=SHORT.get(ln.kernel, ln.kernel),
                            fn=ln.fn,
                            kwargs=ln.kwargs,
                            cfg=cfg,
                            kept=is_kept,
                            tuned=ln.configs is not None,
                            dtype=sc.dtype,
                            gate=sc.gate,
                        )
                    )
    return records, refusals


def _dot_rows(kernel: str, consts: dict) -> int | None:
    """Rows (M) of the attention kernel's tensor-core dots: the resident tile (BLOCK_N keys for dK/dV,
    BLOCK_M queries otherwise). wgmma works on 64-row tiles, so on sm_90 it is expected from 64 rows on."""
    if "BLOCK_M" not in consts or "BLOCK_N" not in consts:
        return None
    return consts["BLOCK_N"] if kernel == "attn_bwd_dkdv" else consts["BLOCK_M"]


def make_record(*, scenario, arch, kernel, fn, kwargs, cfg, kept=True, tuned=True, dtype="bf16", gate=True):
    """One config of one launch to compile; ``cfg``: ``{"kwargs": constexprs, "num_warps", "num_stages"}``."""
    return {
        "scenario": scenario,
        "gate": gate,
        "arch": arch,
        "kernel": kernel,
        "dtype": dtype,
        "config": config_label(cfg),
        "tile_rows": _dot_rows(kernel, cfg["kwargs"]),
        "kept": kept,
        "tuned": tuned,
        "spec": specialize(fn, kwargs, cfg, arch),
    }


def _spec_key(spec: dict) -> str:
    return json.dumps(
        [
            spec["module"],
            spec["name"],
            spec["signature"],
            sorted(map(repr, spec["constexprs"].items())),
            sorted(map(repr, spec["attrs"].items())),
            sorted(map(repr, spec["options"].items())),
            spec["capability"],
        ],
        default=repr,
    )


def run_audit(
    full: bool = False,
    archs=(80, 90),
    all_configs: bool = False,
    jobs: int = 2,
    only_gate: bool = False,
    ptxas_timeout: float = 300.0,
    only: tuple = (),
    log=print,
):
    """Compile every planned config (identical specializations once) and return the audit dict."""
    t0 = time.perf_counter()
    records, refusals = plan(full, archs, all_configs, only_gate, only)
    return finish_audit(records, refusals, archs, full, all_configs, jobs, ptxas_timeout, t0, log)


def compile_records(records: list[dict], jobs: int, ptxas_timeout: float, log=print) -> dict[str, dict]:
    """Compile the distinct specializations of ``records`` (fp32 ones last: their ptxas runs are the slow
    ones); ``jobs=1`` compiles in this process."""
    unique: dict[str, dict] = {}
    for r in records:
        unique.setdefault(_spec_key(r["spec"]), r["spec"])
    keys = sorted(unique, key=lambda k: "fp32" in json.dumps(unique[k]["signature"]))
    log(f"compile audit: {len(records)} configs over {len(keys)} distinct specializations, {jobs} jobs")
    tasks = [(unique[k], smem_limit(unique[k]["capability"]), ptxas_timeout) for k in keys]
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    if jobs <= 1:
        done = map(_compile_task, tasks)
        for key, res in zip(keys, done, strict=True):
            results[key] = res
        return results
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for i, res in enumerate(pool.imap(_compile_task, tasks)):
            results[keys[i]] = res
            if (i + 1) % 10 == 0:
                log(f"  {i + 1}/{len(keys)} compiled ({time.perf_counter() - t0:.0f} s)")
    return results


def finish_audit(records, refusals, archs, full, all_configs, jobs, ptxas_timeout, t0, log=print) -> dict:
    results = compile_records(records, jobs, ptxas_timeout, log)
    for r in records:
        res = results[_spec_key(r["spec"])]
        r.update(res)
        limit = smem_limit(r["arch"])
        r["smem_limit"] = limit
        r["fits"] = res["status"] == "ok" and res["shared"] <= limit
        r["fits_99k"] = res["status"] == "ok" and res["shared"] <= SMEM_99K
        # unknown (ptxas skipped or timed out) counts as spilling
        r["spills"] = res["status"] == "ok" and (
            res.get("spill_stores") is None or bool(res["spill_stores"] or res["spill_loads"])
        )
        del r["spec"]
    import triton

    return {
        "triton": triton.__version__,
        "matrix": "full" if full else "representative",
        "archs": list(archs),
        "all_configs": all_configs,
        "jobs": jobs,
        "ptxas_timeout": ptxas_timeout,
        "cached": sum(bool(r.get("cached")) for r in records),
        "seconds": round(time.perf_counter() - t0, 1),
        "records": records,
        "refusals": refusals,
        "launches": summarize_launches(records),
    }


def summarize_launches(records: list[dict]) -> list[dict]:
    """One row per (scenario, arch, kernel): configs kept / fitting / fitting without spills."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["scenario"], r["arch"], r["kernel"]), []).append(r)
    rows = []
    for (scenario, arch, kernel), rs in groups.items():
        kept = [r for r in rs if r["kept"]]
        ok = [r for r in kept if r["fits"] and not r["spills"]]
        rows.append(
            {
                "scenario": scenario,
                "arch": arch,
                "kernel": kernel,
                "gate": rs[0]["gate"],
                "configs": len(rs),
                "kept": len(kept),
                "kept_errors": sum(r["status"] != "ok" for r in kept),
                "kept_over_smem": sum(r["status"] == "ok" and not r["fits"] for r in kept),
                "kept_fit_no_spill": len(ok),
                "fit_no_spill_99k": sum(r["fits_99k"] and not r["spills"] for r in kept),
                "min_spill": min(
                    (r["spill_stores"] for r in kept if r["fits"] and r["spill_stores"] is not None),
                    default=None,
                ),
                "wgmma": sum(r.get("wgmma", 0) > 0 for r in kept),
                # tl.dot on 16-bit inputs of 64+ rows is meant to be wgmma on sm_90 (fp32 "ieee" dots are FMA)
                "wgmma_expected": sum(_wgmma_expected(r) for r in kept),
                "tma": sum(r.get("tma", 0) > 0 for r in kept),
            }
        )
    return rows


def _wgmma_expected(r: dict) -> bool:
    return (
        r["kernel"] in {SHORT[k] for k in ATTN_KERNELS}
        and r["dtype"] != "fp32"
        and (r.get("tile_rows") or 0) >= 64
        and r["status"] == "ok"
    )


def gate_failures(audit: dict) -> list[str]:
    """Why the gate fails (empty: it passes)."""
    fails = []
    for r in audit["records"]:
        if r["kept"] and r["status"] != "ok":
            fails.append(
                f"sm_{r['arch']} {r['kernel']} {r['config']} ({r['scenario']}): compile error: {r['error']}"
            )
        elif r["kept"] and not r["fits"]:
            fails.append(
                f"sm_{r['arch']} {r['kernel']} {r['config']} ({r['scenario']}): "
                f"shared {r['shared']} B > {r['smem_limit']}"
            )
    for row in audit["launches"]:
        where = f"sm_{row['arch']} {row['kernel']} ({row['scenario']})"
        if row["kept_fit_no_spill"] == 0:
            fails.append(f"{where}: no autotune config that fits and spills 0 bytes")
    for r in audit["records"]:
        if r["kept"] and r["arch"] == 90 and _wgmma_expected(r) and not r.get("wgmma"):
            fails.append(
                f"sm_90 {r['kernel']} {r['config']} ({r['scenario']}): no wgmma in a 16-bit tile of 64+ rows"
            )
    return fails


# --------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------


def arch_counts(audit: dict) -> list[dict]:
    """Per arch: variants (launches), configs compiled/kept, kept over the limit, kept spilling, variants with
    a fitting non-spilling config; and, for sm_90 attention, configs using wgmma / TMA."""
    out = []
    for arch in audit["archs"]:
        rs = [r for r in audit["records"] if r["arch"] == arch]
        kept = [r for r in rs if r["kept"]]
        ls = [row for row in audit["launches"] if row["arch"] == arch]
        attn = [r for r in kept if r["kernel"] in {SHORT[k] for k in ATTN_KERNELS}]
        out.append(
            {
                "arch": arch,
                "variants": len(ls),
                "variants_ok": sum(row["kept_fit_no_spill"] > 0 for row in ls),
                "variants_ok_99k": sum(row["fit_no_spill_99k"] > 0 for row in ls) if arch == 80 else None,
                "configs": len(rs),
                "kept": len(kept),
                "errors": sum(r["status"] != "ok" for r in rs),
                "over_smem": sum(r["status"] == "ok" and not r["fits"] for r in rs),
                "kept_over_smem": sum(r["status"] == "ok" and not r["fits"] for r in kept),
                "spilling": sum(r["spills"] for r in rs),
                "kept_spilling": sum(r["spills"] for r in kept),
                "attn_wgmma": f"{sum(r.get('wgmma', 0) > 0 for r in attn)}/{len(attn)}",
                "attn_tma": f"{sum(r.get('tma', 0) > 0 for r in attn)}/{len(attn)}",
            }
        )
    return out


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _dash(value) -> str:
    return "-" if value is None else str(value)


def markdown(audit: dict, title: str) -> str:
    archs = ", ".join(f"sm_{a}" for a in audit["archs"])
    which = "all configs compiled (kept = survives the pruning)" if audit["all_configs"] else "kept configs"
    lines = [
        f"# {title}",
        "",
        f"triton {audit['triton']}; {audit['matrix']} matrix; {archs}; {which}; {audit['seconds']} s "
        f"with {audit.get('jobs')} jobs ({audit.get('cached', 0)} configs from the result cache).",
        "",
        "Shared = `metadata.shared` (bytes) against the opt-in limit per block (sm_80 166912, sm_90/sm_100 "
        "232448); the 99 KiB columns check the sm_80 code against 101376 (sm_86/89/120 GPUs). "
        "Spill = ptxas -v spill stores/loads (skipped over the limit; a ptxas timeout counts as spilling).",
        "",
        "## Per arch",
        "",
        _row(
            "arch", "variants", "variants with a fitting 0-spill config", "(99 KiB)", "configs", "kept",
            "errors", "over smem (kept)", "spilling (kept)", "sm_90 attn wgmma", "sm_90 attn TMA",
        ),
        _row(*["---"] * 11),
    ]  # fmt: skip
    for c in arch_counts(audit):
        hopper = c["arch"] == 90
        lines.append(
            _row(
                f"sm_{c['arch']}", c["variants"], c["variants_ok"], _dash(c["variants_ok_99k"]), c["configs"],
                c["kept"], c["errors"], f"{c['over_smem']} ({c['kept_over_smem']})",
                f"{c['spilling']} ({c['kept_spilling']})", c["attn_wgmma"] if hopper else "-",
                c["attn_tma"] if hopper else "-",
            )
        )  # fmt: skip
    if audit["refusals"]:
        lines += ["", "## Variants the launch code refuses (clear error, no kernel launched)", ""]
        lines += [f"- sm_{r['arch']} {r['scenario']}: {r['message']}" for r in audit["refusals"]]
    lines += [
        "",
        "## Per launch variant",
        "",
        _row(
            "arch", "scenario", "kernel", "configs", "kept", "kept over smem", "kept fit & 0 spill",
            "(99 KiB)", "min spill B", "wgmma", "tma",
        ),
        _row(*["---"] * 11),
    ]  # fmt: skip
    for row in audit["launches"]:
        ok = row["kept_fit_no_spill"]
        lines.append(
            _row(
                f"sm_{row['arch']}", row["scenario"], row["kernel"], row["configs"], row["kept"],
                row["kept_over_smem"], ok if ok else "**0**",
                row["fit_no_spill_99k"] if row["arch"] == 80 else "-", _dash(row["min_spill"]),
                row["wgmma"], row["tma"],
            )
        )  # fmt: skip
    lines += [
        "",
        "## Every config",
        "",
        _row(
            "arch", "scenario", "kernel", "config", "kept", "status", "shared", "% limit", "regs",
            "spill st/ld", "wgmma", "tma", "mma", "s",
        ),
        _row(*["---"] * 14),
    ]  # fmt: skip
    for r in audit["records"]:
        head = (f"sm_{r['arch']}", r["scenario"], r["kernel"], r["config"], "yes" if r["kept"] else "no")
        if r["status"] != "ok":
            lines.append(_row(*head, f"error: {r['error']}", *["-"] * 8))
            continue
        pct = f"{100 * r['shared'] / r['smem_limit']:.0f}%"
        if r["shared"] > r["smem_limit"]:
            pct = f"**{pct}**"
        spill = f"{r['spill_stores']}/{r['spill_loads']}" if r["spill_stores"] is not None else r.get("ptxas")
        lines.append(
            _row(
                *head,
                "ok",
                r["shared"],
                pct,
                _dash(r["regs"]),
                spill,
                r["wgmma"],
                r["tma"],
                r["mma"],
                r["seconds"],
            )
        )
    return "\n".join(lines) + "\n"


def write_report(audit: dict, out_dir: Path, tag: str, title: str) -> tuple[Path, Path]:
    """``compile_audit_<tag>.json`` and ``.md`` under ``out_dir`` (written to a temp name, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"compile_audit_{tag}.json", out_dir / f"compile_audit_{tag}.md")
    for path, text in zip(
        paths, (json.dumps(audit, indent=1, default=repr) + "\n", markdown(audit, title)), strict=True
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sft-bench compile", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--full", action="store_true", help="the whole launch matrix (default: representative subset)"
    )
    p.add_argument(
        "--gate",
        action="store_true",
        help="exit 1 on a compile error or a variant without a fitting 0-spill config",
    )
    p.add_argument("--all-configs", action="store_true", help="also compile the configs the pruning drops")
    p.add_argument(
        "--archs", default=None, help="comma-separated capabilities (default 80,90; --full: 80,90,100)"
    )
    p.add_argument("--jobs", type=int, default=2, help="parallel compile processes (default 2)")
    p.add_argument("--ptxas-timeout", type=float, default=300.0, help="seconds per ptxas run (default 300)")
    p.add_argument("--only", default="", help="comma-separated scenario names (bench/compile_targets.py)")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the result cache")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for compile_audit_<tag>.json/.md")
    p.add_argument("--tag", default=None, help="file name tag (default: gate / representative / full)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print(
            "error: unset TRITON_INTERPRET: the audit compiles the kernels, it does not interpret them",
            file=sys.stderr,
        )
        return 2
    archs = (
        tuple(int(a) for a in args.archs.split(","))
        if args.archs
        else ((80, 90, 100) if args.full else (80, 90))
    )
    for a in archs:
        if a not in ARCHS and a != 120:
            print(
                f"error: --archs: unknown capability {a} (use {', '.join(map(str, ARCHS))})", file=sys.stderr
            )
            return 2
    audit = run_audit(
        full=args.full,
        archs=archs,
        all_configs=args.all_configs,
        jobs=args.jobs,
        only_gate=args.gate and not args.full,
        ptxas_timeout=args.ptxas_timeout,
        only=tuple(n.strip() for n in args.only.split(",")) if args.only else (),
    )
    tag = args.tag or ("gate" if args.gate else ("full" if args.full else "representative"))
    paths = write_report(audit, args.out, tag, f"Triton compile audit ({tag})")
    for c in arch_counts(audit):
        print(
            f"sm_{c['arch']}: {c['variants_ok']}/{c['variants']} variants with a fitting 0-spill config; "
            f"{c['kept']} kept configs, {c['kept_over_smem']} over smem, {c['kept_spilling']} spilling, "
            f"{c['errors']} errors; "
            f"attn wgmma {c['attn_wgmma']}, TMA {c['attn_tma']}"
        )
    print(f"wrote {paths[0]} and {paths[1]} ({audit['seconds']} s)")
    if args.gate:
        fails = gate_failures(audit)
        for f in fails:
            print(f"gate: {f}", file=sys.stderr)
        print(f"gate: {'FAILED' if fails else 'passed'} ({len(fails)} problems)")
        return 1 if fails else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
