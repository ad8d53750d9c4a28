"""sft-predict on Ray Data (serve.ray_data): the same predictions as sft-predict, Parquet in and out, an
actor killed mid-run, bad rows. One local Ray instance (num_cpus=2) serves the whole module."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import DEMO, ROOT, assert_clean_error, run_cli

pytest_plugins = ["serve_fixtures"]
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install sft-toolchain[ray])")
pq = pytest.importorskip("pyarrow.parquet")

from serve import load_model, predict_file  # noqa: E402
from serve.errors import ServeError  # noqa: E402
from serve.ray_data import BundlePredictor, predict_with_ray  # noqa: E402

WORDS = "my parcel never arrived refund the invoice is wrong app crashes when I log in where order".split()


def texts(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(n)]


def write_jsonl(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def sft_predict(bundle, src, tmp_path, **kwargs) -> list[dict]:
    """sft-predict's records for `src`, in input order."""
    out = tmp_path / f"{src.stem}.sft-predict.jsonl"
    predict_file(load_model(bundle), src, out, progress=False, **kwargs)
    return [json.loads(line) for line in out.read_text().splitlines()]


def read_output(path, fmt: str = "parquet") -> list[dict]:
    """The rows of an output folder, sorted by input position (row_id is FILE:LINE)."""
    if fmt == "parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        rows = [json.loads(line) for f in sorted(path.glob("*.json")) for line in f.read_text().splitlines()]
    return sorted(rows, key=lambda r: (r["row_id"].rsplit(":", 1)[0], int(r["row_id"].rsplit(":", 1)[1])))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_core_serve_path_never_imports_ray():
    code = "import serve, serve.cli, serve.predict, serve.runtime, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # about a minute on 2 busy cores, most of it in sft-predict and the actors starting
def test_10000_rows_equal_sft_predict_row_for_row(local_ray, cls_bundle, tmp_path):
    src = tmp_path / "texts.jsonl"
    write_jsonl(src, [{"id": i, "text": t} for i, t in enumerate(texts(10_000))])
    expected = sft_predict(cls_bundle, src, tmp_path)
    summary = predict_with_ray(cls_bundle, str(src), tmp_path / "out", actors=2, keep_columns=("id",))
    got = read_output(tmp_path / "out")
    assert summary.rows == len(got) == len(expected) == 10_000 and summary.errors == 0
    assert [r["row_id"] for r in got] == [f"{src}:{n}" for n in range(1, 10_001)]  # every line once
    for want, row in zip(expected, got, strict=True):
        assert row["id"] == want["index"]
        assert row["label"] == want["label"], (row, want)
        assert math.isclose(row["score"], want["score"], rel_tol=1e-5, abs_tol=1e-6), (row, want)


def test_parquet_folder_in_parquet_out_token_classification(local_ray, ner_bundle, tmp_path):
    import pyarrow as pa

    sample = texts(300, seed=1)
    (tmp_path / "in").mkdir()
    for part, rows in enumerate((sample[:120], sample[120:])):
        table = pa.table({"doc": [f"d{part}-{i}" for i in range(len(rows))], "body": rows})
        pq.write_table(table, tmp_path / "in" / f"part-{part}.parquet")
    src = tmp_path / "all.txt"
    src.write_text("\n".join(sample) + "\n")
    expected = sft_predict(ner_bundle, src, tmp_path)

    predict_with_ray(
        ner_bundle, str(tmp_path / "in"), tmp_path / "out", text_column="body", keep_columns=("doc",)
    )
    got = read_output(tmp_path / "out")
    assert [r["doc"] for r in got] == [f"d0-{i}" for i in range(120)] + [f"d1-{i}" for i in range(180)]
    assert got[0]["row_id"] == f"{tmp_path / 'in' / 'part-0.parquet'}:0"
    assert pq.read_schema(next((tmp_path / "out").glob("*.parquet"))).names == ["row_id", "doc", "entities"]
    assert sum(len(r["entities"]) for r in got) > 0
    for want, row in zip(expected, got, strict=True):
        assert [(e["entity_group"], e["start"], e["end"]) for e in row["entities"]] == [
            (e["entity_group"], e["start"], e["end"]) for e in want["entities"]
        ]


def test_generation_csv_glob_to_jsonl_bundle_shipped(local_ray, gen_bundle, tmp_path):
    prompts = [f"where is my order {i}" for i in range(12)]
    for part in (0, 1):
        lines = ["id,prompt"] + [f"{i},{p}" for i, p in enumerate(prompts[part * 6 : part * 6 + 6])]
        (tmp_path / f"p{part}.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "all.txt").write_text("\n".join(prompts) + "\n")
    expected = sft_predict(gen_bundle, tmp_path / "all.txt", tmp_path, max_new_tokens=4)

    predict_with_ray(
        gen_bundle,
        str(tmp_path / "p*.csv"),
        tmp_path / "out",
        text_column="prompt",
        output_format="jsonl",
        max_new_tokens=4,
        ship_bundle=True,  # through the object store, as when joining a cluster with --address
    )
    got = read_output(tmp_path / "out", "jsonl")
    assert [r["row_id"] for r in got] == [
        f"{tmp_path / f'p{p}.csv'}:{n}" for p in (0, 1) for n in range(2, 8)
    ]
    assert [r["generated_text"] for r in got] == [r["generated_text"] for r in expected]


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(local_ray, cls_bundle, tmp_path):
    marker = tmp_path / "killed"

    class KilledOnce(BundlePredictor):  # defined here so that Ray ships it by value
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2 and not marker.exists():  # after this actor has already sent out a block
                import os
                import signal

                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts(3000, seed=2)) + "\n")
    summary = predict_with_ray(
        cls_bundle, str(src), tmp_path / "out", actors=2, chunk_rows=200, predictor_class=KilledOnce
    )
    assert marker.exists(), "no actor was killed"
    got = read_output(tmp_path / "out")
    assert summary.rows == len(got) == 3000
    assert [r["row_id"] for r in got] == [f"{src}:{n}" for n in range(1, 3001)]  # all, once each


def test_bad_rows_fail_with_file_and_line_or_go_to_an_error_column(local_ray, cls_bundle, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "my parcel"}\n{"text": ""}\nnot json\n{"body": "x"}\n{"text": "refund"}\n')
    with pytest.raises(ServeError, match=r"bad\.jsonl line 2: empty text in field 'text'"):
        predict_with_ray(cls_bundle, str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))

    summary = predict_with_ray(cls_bundle, str(src), tmp_path / "out", on_error="column")
    got = read_output(tmp_path / "out")
    assert (summary.rows, summary.errors) == (5, 3)
    assert [r["error"] for r in got] == [
        None,
        f"{src} line 2: empty text in field 'text'",
        f"{src} line 3: malformed JSON (Expecting value at column 1)",
        f"{src} line 4: missing text in field 'text'",
        None,
    ]
    assert [r["label"] is None for r in got] == [False, True, True, True, False]


def test_option_and_input_errors_are_one_line(local_ray, cls_bundle, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ServeError, match=r"--actors 3 x --threads 1 needs 3 CPUs; the Ray cluster has 2"):
        predict_with_ray(cls_bundle, str(DEMO / "predict.txt"), out, actors=3)
    with pytest.raises(ServeError, match=r"no file matches"):
        predict_with_ray(cls_bundle, str(tmp_path / "none-*.jsonl"), out)
    with pytest.raises(ServeError, match=r"--input .*missing\.jsonl"):
        predict_with_ray(cls_bundle, str(tmp_path / "missing.jsonl"), out)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ServeError, match=r"not empty and was not written by sft-predict"):
        predict_with_ray(cls_bundle, str(DEMO / "predict.txt"), tmp_path / "taken")


@pytest.fixture
def cli_client(monkeypatch):
    """sft-predict joins the module's Ray instance, which has token authentication on (Ray's default)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")


def test_cli_engine_ray_joins_a_cluster_and_reports_rows_per_second(
    local_ray, cli_client, cls_bundle, tmp_path
):
    src = tmp_path / "texts.jsonl"
    write_jsonl(src, [{"id": i, "text": t} for i, t in enumerate(texts(50, seed=3))])
    out = tmp_path / "out"
    proc = run_cli(
        "sft-predict",
        str(cls_bundle),
        "-i",
        str(src),
        "-o",
        str(out),
        "--engine",
        "ray",
        "--address",
        local_ray,
        "--output-format",
        "jsonl",
        "--keep-column",
        "id",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 50 predictions to {out}" in proc.stdout and "rows/s on 1 actor(s)" in proc.stdout
    got = read_output(out, "jsonl")
    assert [r["id"] for r in got] == list(range(50))
    assert [r["label"] for r in got] == [r["label"] for r in sft_predict(cls_bundle, src, tmp_path)]


def test_cli_bad_row_is_one_clean_line(local_ray, cli_client, cls_bundle, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "my parcel"}\n{"text": "refund"}\n{"text": 3}\n')
    proc = run_cli(
        "sft-predict",
        str(cls_bundle),
        "-i",
        str(src),
        "-o",
        str(tmp_path / "out"),
        "--engine",
        "ray",
        "--address",
        local_ray,
    )
    assert_clean_error(proc, f"{src} line 3: missing text in field 'text'")
    assert not (tmp_path / "out").exists()
