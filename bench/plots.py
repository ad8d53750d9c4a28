"""PNG figures drawn from the benchmarks' JSON records, so a committed result can be redrawn without
rerunning:

python -m bench.plots bench/results/serve_load_int8.json bench/results/export_quality_cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import pyplot, save_png


def serve_load_png(record: dict[str, Any], path: Path) -> Path:
    """Throughput and p99 latency against concurrent clients, one line per server."""
    fig, (ax_rps, ax_p99) = pyplot().subplots(1, 2, figsize=(11, 4))
    for server in record["results"]:
        clients = [lv["clients"] for lv in server["levels"]]
        ax_rps.plot(
            clients, [lv["throughput_rps"] for lv in server["levels"]], marker="o", label=server["server"]
        )
        ax_p99.plot(clients, [lv["p99_ms"] for lv in server["levels"]], marker="o", label=server["server"])
    alone = record.get("model_alone") or []
    if alone:
        sizes = [r["batch_size"] for r in alone]
        ax_rps.plot(
            sizes,
            [r["texts_per_s"] for r in alone],
            linestyle="--",
            color="gray",
            label="model alone (batch = clients)",
        )
        ax_p99.plot(
            sizes,
            [r["p99_ms"] for r in alone],
            linestyle="--",
            color="gray",
            label="model alone (batch = clients)",
        )
    for ax, title in ((ax_rps, "requests / s"), (ax_p99, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend()
    return save_png(fig, path)


def export_quality_png(record: dict[str, Any], path: Path) -> Path:
    """Per exported model: dev accuracy, file size, and texts/s at batch 1 and 32 for each thread count."""
    fig, (ax_acc, ax_size, ax_speed) = pyplot().subplots(1, 3, figsize=(16, 4))
    names = [m["model"] for m in record["models"]]
    accuracies = [100 * m["accuracy"] for m in record["models"]]
    ax_acc.barh(names, accuracies)
    ax_acc.set_xlim(min(accuracies) - 2, max(accuracies) + 1)
    ax_acc.set_title("dev accuracy (%)")
    ax_size.barh(names, [m["file_mb"] for m in record["models"]])
    ax_size.set_title("model file (MB)")
    labels, values = [], []
    for row in record["throughput"]:
        for batch in ("b1", "b32"):
            labels.append(f"{row['model']} {batch} {row['threads']}t")
            values.append(row[f"texts_per_s_{batch}"])
    ax_speed.barh(labels, values)
    ax_speed.tick_params(axis="y", labelsize=7)
    ax_speed.set_title("texts / s (batch, threads)")
    return save_png(fig, path)


def trainer_compare_png(record: dict[str, Any], path: Path) -> Path:
    """The eval metric and training time of each arm; with the speed columns (records from the per-arm
    process harness) also train samples/s, peak RSS and each workload's padding fraction."""
    rows = record["table"]
    metric = "accuracy" if "accuracy" in rows[0] else "f1"
    arms = [r["arm"] for r in rows]
    speed = rows[0].get("samples_per_s") is not None
    fig, axes = pyplot().subplots(1, 4 if speed else 2, figsize=(16 if speed else 10, 3))
    values = [100 * r[metric] for r in rows]
    axes[0].barh(arms, values)
    axes[0].set_xlim(min(values) - 2, max(values) + 1)
    axes[0].set_title(f"eval {metric} (%)")
    axes[1].barh(arms, [r["train_s"] for r in rows])
    axes[1].set_title("training time (s)")
    if speed:
        axes[2].barh(arms, [r["samples_per_s"] for r in rows])
        for i, r in enumerate(rows):
            if r.get("speed_vs_trainer"):
                axes[2].text(r["samples_per_s"], i, f" {r['speed_vs_trainer']:.2f}x", va="center", fontsize=8)
        axes[2].set_title("train samples / s (x the Trainer)")
        axes[3].barh(arms, [r["peak_rss_mb"] for r in rows])
        axes[3].set_title("peak RSS (MB)")
        padding = ", ".join(f"{r['arm']} {100 * r['padding_fraction']:.0f}%" for r in rows)
        fig.suptitle(f"padding in the batches: {padding}", fontsize=9)
    return save_png(fig, path)


def runtime_png(record: dict[str, Any], path: Path) -> Path:
    """onnxruntime against PyTorch: texts/s at each batch size."""
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    rows = record["throughput"]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["torch_texts_per_s"] for r in rows], width=0.4, label="PyTorch")
    ax.bar([i + 0.2 for i in x], [r["ort_texts_per_s"] for r in rows], width=0.4, label="onnxruntime")
    ax.set_xticks(list(x), [f"batch {r['batch_size']}" for r in rows])
    ax.set_title(f"texts / s ({record['threads']} threads)")
    ax.legend()
    return save_png(fig, path)


DRAWERS = {
    "runtime": runtime_png,
    "serve_load": serve_load_png,
    "export_quality": export_quality_png,
    "trainer_compare": trainer_compare_png,
}


def draw(json_path: Path) -> Path:
    """The PNG beside a JSON record, drawn by the figure that fits its file name."""
    for prefix, drawer in DRAWERS.items():
        if json_path.name.startswith(prefix):
            return drawer(json.loads(json_path.read_text()), json_path.with_suffix(".png"))
    raise SystemExit(f"error: {json_path}: no figure for this record (known: {', '.join(DRAWERS)})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="+", type=Path)
    for path in p.parse_args(argv).records:
        print(f"wrote {draw(path)}")


if __name__ == "__main__":
    main()
