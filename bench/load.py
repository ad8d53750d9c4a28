"""Load test: sft-serve against a FastAPI + uvicorn + transformers.pipeline server on the same checkpoint.

For each server: cold start (process start -> first 200 on POST /predict), then closed-loop clients
(each sends one single-sentence request, waits for the answer, sends the next) at each concurrency level,
bounded by a request count and a time limit; throughput, p50/p95/p99 latency, errors; peak RSS of the
server process from /proc; and for sft-serve a soak (many requests at the highest concurrency, RSS
sampled throughout). Traffic goes to loopback only. Before the servers, the bundle's model alone (in this
process: no HTTP, no client, batches tokenized and split by length as sft-serve does) at each level's batch
size: the most the daemon could serve on this machine, so what HTTP, batching and the client cost shows.

    python -m bench.load BUNDLE CHECKPOINT [--clients 1,8,32,64] [--seconds 10] [--soak 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import print_table, write_json
from .plots import draw
from .runtime import read_texts

HOST = "127.0.0.1"  # the only address this tool ever sends to
REQUEST_TIMEOUT_S = 30.0


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the status and body."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_level(
    port: int,
    bodies: list[bytes],
    clients: int,
    max_requests: int,
    seconds: float,
    rss_pid: int | None = None,
    path: str = "/predict",
) -> dict:
    """Closed-loop load: `clients` connections, until `max_requests` are sent or `seconds` pass."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    rss: list[int] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal sent
        conn = Connection(port)
        while sent < max_requests and time.perf_counter() < deadline:
            body = bodies[(sent * 7 + k) % len(bodies)]
            sent += 1
            t0 = time.perf_counter()
            try:
                status = await asyncio.wait_for(conn.post(path, body), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                status = type(e).__name__
                conn.close()
            latencies.append(time.perf_counter() - t0)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        conn.close()

    async def sample_rss() -> None:
        while True:
            rss.append(rss_kb(rss_pid))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample_rss()) if rss_pid else None
    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - t0
    if sampler:
        sampler.cancel()
    ok = statuses.get("200", 0)
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "ok": ok,
        "errors": len(latencies) - ok,
        "statuses": statuses,
        "seconds": elapsed,
        "throughput_rps": ok / elapsed,
        "p50_ms": _quantile(ordered, 0.50) * 1e3,
        "p95_ms": _quantile(ordered, 0.95) * 1e3,
        "p99_ms": _quantile(ordered, 0.99) * 1e3,
        **({"rss_kb_samples": rss} if rss_pid else {}),
    }


def model_ceiling(bundle: str, texts: list[str], sizes: list[int], seconds: float) -> list[dict]:
    """The bundle's model alone on random batches of `size` texts (sft-serve's CPU token budget and
    splitting):
        texts/s and batch latency. `size` concurrent single-text clients cannot be served faster than this."""
    from serve.batcher import split_by_length
    from serve.runtime import TextClassifier

    clf = TextClassifier.from_bundle(bundle, spinning=False)
    rng = random.Random(0)
    rows = []
    for size in sizes:
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            batch = rng.choices(texts, k=size)
            t0 = time.perf_counter()
            encodings = clf.encode(batch)
            for call in split_by_length([len(e.ids) for e in encodings], serve_batch_tokens()):
                clf.logits_of([encodings[i] for i in call])
            times.append(time.perf_counter() - t0)
        ordered = sorted(times)
        rows.append(
            {
                "batch_size": size,
                "texts_per_s": size * len(times) / sum(times),
                "p50_ms": _quantile(ordered, 0.50) * 1e3,
                "p99_ms": _quantile(ordered, 0.99) * 1e3,
                "batches": len(times),
            }
        )
    return rows


def serve_batch_tokens() -> int:
    """sft-serve's default token budget on CPU (serve.options), so the model-alone arm batches like it."""
    from serve.options import DEFAULTS

    return DEFAULTS.batch_tokens(on_cuda=False)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(
    cmd: list[str],
    port: int,
    first_body: bytes,
    timeout_s: float = 180.0,
    log=subprocess.DEVNULL,
    *,
    env: dict[str, str] | None = None,
    path: str = "/predict",
    cwd: str | None = None,
) -> tuple[subprocess.Popen, float]:
    """Start the server; return it and the seconds from process start to its first 200 on `path`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=log, start_new_session=True, env={**os.environ, **(env or {})}, cwd=cwd
    )

    async def first_ok() -> None:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
            conn = Connection(port)
            try:
                if await conn.post(path, first_body) == 200:
                    return
            except (OSError, asyncio.IncompleteReadError, ValueError):
                pass
            finally:
                conn.close()
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"server not answering after {timeout_s:.0f}s: {' '.join(cmd)}")
            await asyncio.sleep(0.002)

    try:
        asyncio.run(first_ok())
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, time.perf_counter() - t0


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass
class Arm:
    """One server under test: how to start it and what its clients send."""

    name: str
    cmd: list[str]
    port: int
    bodies: list[bytes]
    path: str = "/predict"
    env: dict[str, str] = field(default_factory=dict)
    soak: bool = False
    cwd: str | None = None


def bench_server(
    arm: Arm, levels: list[int], *, seconds: float, max_requests: int, soak: int, cold_starts: int
) -> dict:
    colds = []
    start = functools.partial(
        start_server, arm.cmd, arm.port, arm.bodies[0], env=arm.env, path=arm.path, cwd=arm.cwd
    )
    for _ in range(cold_starts - 1):  # extra cold starts, measured and stopped at once
        proc, cold = start()
        colds.append(cold)
        stop_server(proc)
    proc, cold = start()
    colds.append(cold)
    result: dict = {
        "server": arm.name,
        "command": arm.cmd,
        "env": arm.env,
        "load_average_before": os.getloadavg(),
        "cold_start_s": sorted(colds)[len(colds) // 2],
        "cold_start_all_s": colds,
        "rss_after_start_kb": rss_kb(proc.pid),
        "levels": [],
    }
    load = functools.partial(run_level, arm.port, arm.bodies, path=arm.path)
    try:
        asyncio.run(load(8, 200, 30))  # warm-up, not reported
        for clients in levels:
            level = asyncio.run(load(clients, max_requests, seconds))
            result["levels"].append(level)
            print(
                f"  {arm.name} {clients:>3} clients: {level['throughput_rps']:.0f} req/s, "
                f"p99 {level['p99_ms']:.1f} ms, errors {level['errors']}",
                flush=True,
            )
        if soak:
            level = asyncio.run(load(max(levels), soak, 3600, rss_pid=proc.pid))
            samples = level.pop("rss_kb_samples")
            tenth = max(1, len(samples) // 10)
            level.update(
                rss_first_tenth_kb=max(samples[:tenth]),
                rss_last_tenth_kb=max(samples[-tenth:]),
                rss_max_kb=max(samples),
            )
            result["soak"] = level
            print(
                f"  {arm.name} soak: {level['ok']}/{level['requests']} ok, "
                f"RSS {level['rss_first_tenth_kb']} -> "
                f"{level['rss_last_tenth_kb']} kB",
                flush=True,
            )
        result["peak_rss_kb"] = rss_kb(proc.pid, "VmHWM")
        result["load_average_after"] = os.getloadavg()
    finally:
        result["exit_code_after_sigterm"] = stop_server(proc)
    return result


def median_result(runs: list[dict]) -> dict:
    """One server's rounds folded into one record: per level the median throughput and latencies, the
    median cold start, the largest peak RSS; the soak of the round that had one."""
    levels = []
    for i, first in enumerate(runs[0]["levels"]):
        at = [r["levels"][i] for r in runs]
        levels.append(
            {
                "clients": first["clients"],
                "requests": sum(lv["requests"] for lv in at),
                "ok": sum(lv["ok"] for lv in at),
                "errors": sum(lv["errors"] for lv in at),
                **{
                    k: statistics.median(lv[k] for lv in at)
                    for k in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms")
                },
                "throughput_rps_rounds": [lv["throughput_rps"] for lv in at],
            }
        )
    record = {
        "server": runs[0]["server"],
        "rounds": len(runs),
        "cold_start_s": statistics.median(r["cold_start_s"] for r in runs),
        "cold_start_all_s": [c for r in runs for c in r["cold_start_all_s"]],
        "peak_rss_kb": max(r["peak_rss_kb"] for r in runs),
        "load_average_before": runs[0]["load_average_before"],
        "load_average_after": runs[-1].get("load_average_after", [float("nan")]),
        "levels": levels,
    }
    soaks = [r["soak"] for r in runs if "soak" in r]
    if soaks:
        record["soak"] = soaks[0]
    return record


SERVE_LAUNCHER = "import sys; from serve.cli import serve_main; sys.argv[0] = 'sft-serve'; serve_main()"


def arms_for(a: argparse.Namespace, bodies: list[bytes]) -> list[Arm]:
    texts = [json.loads(b)["inputs"] for b in bodies]
    arms = []
    for name in a.servers.split(","):
        port = free_port()
        if name in ("sft-serve", "sft-serve-before"):
            # both through the same launcher; "before" imports serve/ from another source tree
            cmd = [sys.executable, "-c", SERVE_LAUNCHER, a.bundle, "--host", HOST, "--port", str(port)]
            env = {}
            if name == "sft-serve-before":
                if not a.before:
                    raise SystemExit("error: --servers sft-serve-before needs --before SOURCE_TREE")
                env = {"PYTHONPATH": str(Path(a.before).resolve())}
            arms.append(Arm(name, [*cmd, *a.serve_args.split()], port, bodies, env=env, soak=True))
        elif name == "baseline":
            cmd = [sys.executable, "-m", "bench.baseline_server", a.checkpoint, "--port", str(port)]
            arms.append(Arm(name, cmd, port, bodies))
        elif name == "infinity":
            # infinity-emb's /classify (in its own venv), same texts one per request. It is started in
            # the model directory with --model-id ".": given a path, infinity 0.0.78 hands optimum 2.x
            # an absolute file name, which optimum refuses.
            model_dir = Path(a.infinity_model or a.checkpoint).resolve()
            cmd = [
                a.infinity,
                "v2",
                "--model-id",
                ".",
                "--served-model-name",
                "clf",
                "--engine",
                "optimum",
                "--device",
                "cpu",
                "--host",
                HOST,
                "--port",
                str(port),
                *a.infinity_args.split(),
            ]
            own = [json.dumps({"input": [t], "model": "clf"}).encode() for t in texts]
            env = {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
            arms.append(Arm(name, cmd, port, own, path="/classify", env=env, cwd=str(model_dir)))
        else:
            raise SystemExit(
                f"error: unknown server {name!r} (sft-serve, sft-serve-before, baseline, infinity)"
            )
    return arms


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", help="bundle served by sft-serve")
    p.add_argument("checkpoint", help="the same model as a checkpoint, for the baseline")
    p.add_argument("--clients", default="1,8,32,64", help="concurrency levels")
    p.add_argument("--seconds", type=float, default=10.0, help="time limit per level")
    p.add_argument("--requests", type=int, default=20000, help="request limit per level")
    p.add_argument(
        "--soak",
        type=int,
        default=10000,
        help="requests at the highest level for the RSS soak (sft-serve arms, first round; 0: none)",
    )
    p.add_argument(
        "--cold-starts", type=int, default=3, help="cold starts per server and round (the median is reported)"
    )
    p.add_argument("--texts", help="file of texts (one per line, or a GLUE .tsv) [default: demo eval texts]")
    p.add_argument(
        "--servers",
        default="sft-serve,baseline",
        help="comma-separated: sft-serve, sft-serve-before (--before), baseline, infinity (--infinity)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the servers in turn this many times (A B A B ...); medians per level are reported",
    )
    p.add_argument("--before", help="source tree whose serve/ the sft-serve-before arm runs (a git worktree)")
    p.add_argument("--infinity", default="infinity_emb", help="infinity-emb's CLI (e.g. in its own venv)")
    p.add_argument(
        "--infinity-model", help="model directory for infinity, with a model.onnx [default: CHECKPOINT]"
    )
    p.add_argument("--infinity-args", default="", help="extra arguments for infinity_emb v2")
    p.add_argument(
        "--ceiling-seconds",
        type=float,
        default=5.0,
        help="time per batch size for the model-only ceiling (0: skip it)",
    )
    p.add_argument("--serve-args", default="", help="extra arguments for sft-serve")
    p.add_argument("--name", default="serve_load", help="JSON file name under --out (serve_load*)")
    p.add_argument("--out", help="directory for the JSON [default: bench/results]; --no-write to skip")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server under test
    levels = [int(x) for x in a.clients.split(",")]
    bodies = [json.dumps({"inputs": t}).encode() for t in read_texts(a.texts)]
    ceiling = []
    if a.ceiling_seconds > 0:
        ceiling = model_ceiling(
            a.bundle, [json.loads(b)["inputs"] for b in bodies], levels, a.ceiling_seconds
        )
        print("model alone (no HTTP, no client):")
        print_table(ceiling, ["batch_size", "texts_per_s", "p50_ms", "p99_ms", "batches"])
    arms = arms_for(a, bodies)
    runs: dict[str, list[dict]] = {arm.name: [] for arm in arms}
    for round_ in range(a.rounds):
        for arm in arms:
            print(
                f"round {round_ + 1}/{a.rounds} {arm.name}: {' '.join(arm.cmd)}  "
                f"(load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            runs[arm.name].append(
                bench_server(
                    arm,
                    levels,
                    seconds=a.seconds,
                    max_requests=a.requests,
                    soak=a.soak if arm.soak and round_ == 0 else 0,
                    cold_starts=a.cold_starts,
                )
            )
    results = [median_result(r) if len(r) > 1 else r[0] for r in runs.values()]
    rows = [
        {
            "server": r["server"],
            "clients": lv["clients"],
            "requests": lv["requests"],
            "errors": lv["errors"],
            "req_per_s": lv["throughput_rps"],
            "p50_ms": lv["p50_ms"],
            "p95_ms": lv["p95_ms"],
            "p99_ms": lv["p99_ms"],
        }
        for r in results
        for lv in r["levels"]
    ]
    print("\n" + ("medians of the rounds:" if a.rounds > 1 else ""))
    print_table(rows, ["server", "clients", "requests", "errors", "req_per_s", "p50_ms", "p95_ms", "p99_ms"])
    print()
    print_table(
        [
            {
                "server": r["server"],
                "load_avg": f"{r['load_average_before'][0]:.1f} -> "
                f"{r.get('load_average_after', [float('nan')])[0]:.1f}",
                "cold_start_s": r["cold_start_s"],
                "peak_rss_mb": r["peak_rss_kb"] / 1024,
                "soak": f"{r['soak']['ok']}/{r['soak']['requests']} ok" if "soak" in r else "",
                "soak_rss_mb": (
                    f"{r['soak']['rss_first_tenth_kb'] / 1024:.0f} -> "
                    f"{r['soak']['rss_last_tenth_kb'] / 1024:.0f}"
                )
                if "soak" in r
                else "",
            }
            for r in results
        ],
        ["server", "load_avg", "cold_start_s", "peak_rss_mb", "soak", "soak_rss_mb"],
    )
    summary = ratios({r["server"]: r for r in results}, ceiling)
    if not a.no_write:
        path = write_json(
            a.name,
            {
                "bundle": a.bundle,
                "checkpoint": a.checkpoint,
                "levels": levels,
                "model_alone": ceiling,
                "seconds_per_level": a.seconds,
                "requests_per_level": a.requests,
                "rounds": a.rounds,
                "cpu_count": os.cpu_count(),
                "results": results,
                "runs": runs,
                "summary": summary,
            },
            Path(a.out) if a.out else None,
        )
        print(f"wrote {path} and {draw(path)}")


def ratios(by_name: dict[str, dict], ceiling: list[dict]) -> dict[str, float]:
    """Throughput of sft-serve over each other server at each level, and over the model alone."""
    summary = {}
    ours = by_name.get("sft-serve")
    if ours is None:
        return summary
    for other in by_name:
        if other == "sft-serve":
            continue
        prefix = "speedup" if other == "baseline" else f"over_{other}"
        for mine, theirs in zip(ours["levels"], by_name[other]["levels"], strict=False):
            summary[f"{prefix}_at_{mine['clients']}"] = mine["throughput_rps"] / max(
                theirs["throughput_rps"], 1e-9
            )
        print(
            f"throughput ratio sft-serve / {other}: "
            + ", ".join(
                f"{k.split('_')[-1]} clients {v:.2f}x"
                for k, v in summary.items()
                if k.startswith(prefix + "_at")
            )
        )
    for level, alone in zip(ours["levels"], ceiling, strict=False):
        summary[f"served_over_model_alone_at_{level['clients']}"] = (
            level["throughput_rps"] / alone["texts_per_s"]
        )
    if ceiling:
        print(
            "sft-serve throughput / the model alone at the same batch size: "
            + ", ".join(
                f"{k.split('_')[-1]} clients {v:.0%}" for k, v in summary.items() if k.startswith("served_")
            )
        )
    return summary


if __name__ == "__main__":
    main()
