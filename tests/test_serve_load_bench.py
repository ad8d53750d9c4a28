"""sft-bench load's before/after mode: two sft-serve source trees in alternating rounds, medians per level."""

from __future__ import annotations

import json

from conftest import ROOT


def test_alternating_rounds_of_two_source_trees(tiny_bundle, tiny_checkpoint, tmp_path, capsys):
    from bench.load import main

    main(
        [
            str(tiny_bundle),
            str(tiny_checkpoint),
            "--servers",
            "sft-serve,sft-serve-before",
            "--before",
            str(ROOT),  # the same tree here: what is tested is the harness
            "--rounds",
            "2",
            "--clients",
            "1,4",
            "--seconds",
            "0.4",
            "--soak",
            "40",
            "--cold-starts",
            "1",
            "--ceiling-seconds",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    order = [line.split(":")[0] for line in out.splitlines() if line.startswith("round ")]
    assert order == [
        "round 1/2 sft-serve",
        "round 1/2 sft-serve-before",
        "round 2/2 sft-serve",
        "round 2/2 sft-serve-before",
    ]
    record = json.loads((tmp_path / "serve_load.json").read_text())
    assert [r["server"] for r in record["results"]] == ["sft-serve", "sft-serve-before"]
    for result in record["results"]:
        assert result["rounds"] == 2 and result["soak"]["ok"] == 40
        for level in result["levels"]:
            rounds = level["throughput_rps_rounds"]
            assert len(rounds) == 2 and level["errors"] == 0
            assert min(rounds) <= level["throughput_rps"] <= max(rounds)
    before = record["runs"]["sft-serve-before"][0]
    assert before["env"]["PYTHONPATH"] == str(ROOT) and before["exit_code_after_sigterm"] == 0
    assert record["summary"]["over_sft-serve-before_at_4"] > 0
