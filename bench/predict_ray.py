"""Batch prediction throughput: sft-predict in one process against `--engine ray` with 1 and 2 actors.

Every arm predicts the same JSONL file with the same bundle and micro-batch size. sft-predict runs
in this process with onnxruntime's default threads (all usable cores); each Ray actor runs one
onnxruntime thread (one CPU), on a local Ray instance started per arm with all cores; a second
sft-predict arm with the actors' thread count isolates what Ray costs per row. rows/s counts reading,
predicting and writing; the Ray start (or the model load) is reported beside it, not inside it.

    python -m bench.predict_ray BUNDLE [--input FILE | --rows 20000] [--actors 1,2] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .common import print_table, write_outputs

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"


def write_input(path: Path, rows: int) -> Path:
    """The first `rows` SST-2 training sentences as JSONL {id, text} (repeated if there are fewer)."""
    with SST2.open(encoding="utf-8", newline="") as f:
        texts = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            out.write(json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n")
    return path


def local_arm(bundle: Path, src: Path, work: Path, batch_size: int, threads: int | None) -> dict:
    from serve import load_model, predict_file

    t0 = time.perf_counter()
    runner = load_model(bundle, threads=threads)
    loaded = time.perf_counter() - t0
    s = predict_file(runner, src, work / "local.jsonl", batch_size=batch_size, progress=False)
    return {
        "engine": "sft-predict",
        "actors": None,
        "threads": threads or "auto",
        "rows": s.rows,
        "seconds": s.seconds,
        "startup_seconds": loaded,
        "rows_per_s": s.rows / s.seconds,
    }


def ray_arm(bundle: Path, src: Path, work: Path, actors: int, threads: int, batch_size: int) -> dict:
    from serve.ray_data import predict_with_ray

    out = work / f"ray-{actors}"
    t0 = time.perf_counter()
    s = predict_with_ray(
        bundle, str(src), out, actors=actors, threads=threads, batch_size=batch_size, num_cpus=os.cpu_count()
    )
    wall = time.perf_counter() - t0
    shutil.rmtree(out)
    return {
        "engine": "ray",
        "actors": actors,
        "threads": threads,
        "rows": s.rows,
        "seconds": s.seconds,
        "startup_seconds": s.startup_seconds,
        "wall_seconds": wall,
        "rows_per_s": s.rows_per_second,
    }


def draw(record: dict):
    def figure(plt):
        rows = record["results"]
        names = [r["arm"] for r in rows]
        fig, ax = plt.subplots(figsize=(8, 4))
        colors = ["#dd8452" if r["engine"] == "ray" else "#4c72b0" for r in rows]
        bars = ax.bar(names, [r["rows_per_s"] for r in rows], color=colors)
        for bar, r in zip(bars, rows, strict=True):
            start = "Ray start" if r["engine"] == "ray" else "load"
            note = f"{r['rows_per_s']:.0f}/s\n+{r['startup_seconds']:.0f}s {start}"
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
        ax.set_ylabel("rows/s (read, predict, write)")
        ax.set_title(f"{record['rows']} rows, {record['bundle_name']}, {os.cpu_count()} CPUs")
        ax.margins(y=0.25)
        return fig

    return figure


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", type=Path, help="JSONL with a 'text' field [default: SST-2 sentences]")
    p.add_argument("--rows", type=int, default=20_000, help="rows of the default input")
    p.add_argument("--actors", default="1,2", help="comma-separated actor counts")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per actor")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--name", default="predict_ray_cpu")
    p.add_argument("--note", default="", help="what else ran on the machine, for the record")
    p.add_argument("--out-dir", type=Path)
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="predict-ray-") as tmp:
        work = Path(tmp)
        src = a.input or write_input(work / "input.jsonl", a.rows)
        rows = [local_arm(a.bundle, src, work, a.batch_size, None)]
        if a.threads:  # the same thread count as one actor: what Ray itself costs per row
            rows.append(local_arm(a.bundle, src, work, a.batch_size, a.threads))
        for actors in (int(x) for x in a.actors.split(",")):
            rows.append(ray_arm(a.bundle, src, work, actors, a.threads, a.batch_size))
    base = rows[0]["rows_per_s"]
    for r in rows:
        r["arm"] = (
            f"ray, {r['actors']} actor(s)" if r["engine"] == "ray" else f"sft-predict, {r['threads']} thr"
        )
        r["us_per_row"] = 1e6 / r["rows_per_s"]
        r["vs_sft_predict"] = r["rows_per_s"] / base
    print_table(rows, ["arm", "threads", "rows", "seconds", "rows_per_s", "us_per_row", "startup_seconds"])
    record = {
        "bundle": str(a.bundle),
        "bundle_name": a.bundle.name,
        "input": str(a.input or f"first {a.rows} SST-2 train sentences"),
        "rows": rows[0]["rows"],
        "batch_size": a.batch_size,
        "ray_version": _ray_version(),
        "note": a.note,
        "results": rows,
    }
    write_outputs(a.name, record, a.out_dir, draw(record))


def _ray_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("ray")
    except Exception:
        return None


if __name__ == "__main__":
    main()
