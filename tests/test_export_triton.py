"""sft-export --triton-repo: config.pbtxt parsed back (by a small protobuf text-format parser written here,
independent of the writer) must describe the graph onnxruntime actually loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_export import CLS_LABELS, classifier_checkpoint, llama_checkpoint, single_threaded  # noqa: F401

from export import export_onnx
from serve.bundle import sha256_file

TOKEN = re.compile(
    r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|([{}\[\]:,]))'
)
ORT_TO_TRITON = {
    "tensor(int64)": "TYPE_INT64",
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int32)": "TYPE_INT32",
}


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format, the subset model configs use: scalars, enums, messages, [lists]; a field that
    appears more than once, or as a list, becomes a Python list."""
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        m = TOKEN.match(text, pos)
        assert m and m.end() > pos, f"cannot tokenize at {text[pos : pos + 20]!r}"
        pos = m.end()
        if not m.group(1):
            tokens.append(next(g for g in m.groups()[1:] if g is not None))
    fields, rest = _fields(tokens, 0)
    assert rest == len(tokens), f"trailing tokens {tokens[rest:]}"
    return fields


def _fields(tokens: list[str], i: int) -> tuple[dict, int]:
    out: dict = {}
    while i < len(tokens) and tokens[i] != "}":
        name = tokens[i]
        assert re.fullmatch(r"[A-Za-z_]\w*", name), f"expected a field name, got {name!r}"
        i += 1
        if tokens[i] == ":":
            i += 1
        value, i = _value(tokens, i)
        if name in out:
            previous = out[name] if isinstance(out[name], list) else [out[name]]
            out[name] = previous + (value if isinstance(value, list) else [value])
        else:
            out[name] = value
    return out, i


def _value(tokens: list[str], i: int):
    token = tokens[i]
    if token == "{":
        fields, i = _fields(tokens, i + 1)
        assert tokens[i] == "}"
        return fields, i + 1
    if token == "[":
        items, i = [], i + 1
        while tokens[i] != "]":
            item, i = _value(tokens, i)
            items.append(item)
            if tokens[i] == ",":
                i += 1
        return items, i + 1
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape"), i + 1
    if re.fullmatch(r"-?\d+", token):
        return int(token), i + 1
    if re.fullmatch(r"-?\d+\.\d+", token):
        return float(token), i + 1
    return token, i + 1  # an enum value such as TYPE_INT64


def test_parser_reads_nested_messages_lists_and_repeats():
    text = (
        'name: "m"\nmax_batch_size: 8\ninput [ { name: "a" dims: [ -1, 4 ] }, { name: "b" dims: [ ] } ]\n'
        'output { name: "y" }\noutput { name: "z" }\ndynamic_batching { }\n# comment\nkind: KIND_CPU\n'
    )
    assert parse_pbtxt(text) == {
        "name": "m",
        "max_batch_size": 8,
        "kind": "KIND_CPU",
        "dynamic_batching": {},
        "input": [{"name": "a", "dims": [-1, 4]}, {"name": "b", "dims": []}],
        "output": [{"name": "y"}, {"name": "z"}],
    }
    with pytest.raises(AssertionError):
        parse_pbtxt('name: "m" }')


def expected_tensors(session_values) -> list[dict]:
    """What the config must say, from onnxruntime's view of the graph (batch axis dropped)."""
    return [
        {
            "name": v.name,
            "data_type": ORT_TO_TRITON[v.type],
            "dims": [d if isinstance(d, int) else -1 for d in v.shape[1:]],
        }
        for v in session_values
    ]


def check_entry(entry: Path, bundle: Path) -> dict:
    import onnxruntime as ort

    config = parse_pbtxt((entry / "config.pbtxt").read_text())
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert config["name"] == entry.name and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 32 and "max_queue_delay_microseconds" in config["dynamic_batching"]
    got_inputs = [{k: t[k] for k in ("name", "data_type", "dims")} for t in config["input"]]
    got_outputs = [{k: t[k] for k in ("name", "data_type", "dims")} for t in config["output"]]
    assert got_inputs == expected_tensors(session.get_inputs())
    assert got_outputs == expected_tensors(session.get_outputs())
    assert sha256_file(entry / "1" / "model.onnx") == sha256_file(bundle / "model.onnx")
    return config


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


def test_classifier_triton_entry(base, tmp_path):
    repo = tmp_path / "models"
    report = export_onnx(classifier_checkpoint(base), tmp_path / "ticket-router", triton_repo=repo)
    entry = repo / "ticket-router"
    assert report.triton_dir == entry
    config = check_entry(entry, report.bundle_dir)
    assert [t["name"] for t in config["input"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert config["input"][0]["dims"] == [-1] and config["output"][0]["dims"] == [3]
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert (entry / "labels.txt").read_text().splitlines() == CLS_LABELS
    assert sorted(p.name for p in repo.iterdir()) == ["ticket-router"]

    # Exporting again replaces the entry; a foreign directory of that name is refused.
    export_onnx(classifier_checkpoint(base), tmp_path / "ticket-router", triton_repo=repo)
    assert sorted(p.name for p in repo.iterdir()) == ["ticket-router"]
    (repo / "other").mkdir()
    (repo / "other" / "notes.txt").write_text("x")
    from sft.errors import InputError

    with pytest.raises(InputError, match="not a Triton model"):
        export_onnx(classifier_checkpoint(base), tmp_path / "other", triton_repo=repo)
    assert not (tmp_path / "other").exists()


def test_decoder_triton_entry_has_cache_dims(base, tmp_path):
    report = export_onnx(llama_checkpoint(base), tmp_path / "chat", triton_repo=tmp_path / "models")
    config = check_entry(tmp_path / "models" / "chat", report.bundle_dir)
    past = next(t for t in config["input"] if t["name"] == "past_key_values.0.key")
    assert past["dims"] == [2, -1, 8] and past["data_type"] == "TYPE_FP32"
    assert "label_filename" not in config["output"][0]
