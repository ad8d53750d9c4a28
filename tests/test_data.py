from __future__ import annotations

import json

import pytest

from sft.data import LabelMap, extract_examples, read_table
from sft.errors import InputError


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name,content",
    [
        ("d.csv", 'text,label\n"hello, world",pos\nbad day,neg\n'),
        ("d.tsv", 'text\tlabel\nhello, "world"\tpos\nbad day\tneg\n'),
        ("d.jsonl", '{"text": "hello, world", "label": "pos"}\n\n{"text": "bad day", "label": "neg"}\n'),
        (
            "d.json",
            json.dumps([{"text": "hello, world", "label": "pos"}, {"text": "bad day", "label": "neg"}]),
        ),
    ],
)
def test_formats_read_the_same_examples(tmp_path, name, content):
    table = read_table(str(_write(tmp_path / name, content)))
    ex = extract_examples(table, "text", "label")
    assert ex.texts[1] == "bad day" and ex.labels == ["pos", "neg"]
    assert ex.texts[0] in ("hello, world", 'hello, "world"')


def test_parquet(tmp_path):
    import datasets

    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list([{"t": "a b", "y": 1}, {"t": "c", "y": 0}]).to_parquet(str(path))
    ex = extract_examples(read_table(str(path)), "t", "y")
    assert ex.texts == ["a b", "c"] and ex.labels == ["1", "0"]


def test_label_map_sorts_numeric_labels_numerically():
    assert LabelMap.from_labels(["10", "2", "1"]).names == ["1", "2", "10"]
    assert LabelMap.from_labels(["b", "a"]).names == ["a", "b"]
    assert LabelMap.from_labels(["1", "0", "1"]).encode(["0", "1"], ["x", "y"], "label") == [0, 1]


@pytest.mark.parametrize(
    "name,content,column,fragments",
    [
        ("e.csv", "text,label\nfine,a\n,b\n", "text", ["e.csv line 3", "empty text", "'text'"]),
        (
            "e.jsonl",
            '{"text": "ok", "label": 1}\n{"text": "x", "label": 2\n',
            "text",
            ["e.jsonl line 2", "malformed JSON"],
        ),
        ("e.csv", "sentence,label\nfine,a\n", "text", ["no column 'text'", "sentence"]),
        ("e.csv", "text,label\nfine,a,extra\n", "text", ["e.csv line 2", "expected 2 fields"]),
        ("e.csv", "", "text", ["empty file"]),
        ("e.csv", "text,label\n", "text", ["no data rows"]),
        (
            "e.jsonl",
            '{"text": "a", "label": "x"}\n{"text": "fine"}\n',
            "text",
            ["e.jsonl line 2", "empty label"],
        ),
        ("e.jsonl", '{"text": "fine"}\n', "text", ["no column 'label'", "--label-column"]),
    ],
)
def test_bad_input_names_the_place(tmp_path, name, content, column, fragments):
    path = _write(tmp_path / name, content)
    with pytest.raises(InputError) as err:
        extract_examples(read_table(str(path)), column, "label")
    for fragment in fragments:
        assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_unknown_label(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_table(str(tmp_path / "nope.csv"))
    labels = LabelMap.from_labels(["a", "b"])
    with pytest.raises(InputError, match=r"x.csv line 3: label 'c' in column 'label' is not one of"):
        labels.encode(["a", "c"], ["x.csv line 2", "x.csv line 3"], "label")
