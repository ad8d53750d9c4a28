"""Token classification data and metrics: CoNLL/JSONL reading, IOB1 -> IOB2, sub-word alignment, entity F1."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch
from conftest import SHARED_DATA

from sft.errors import InputError
from sft.ner import (
    Sentence,
    decode_predictions,
    detect_scheme,
    encode_sentences,
    entity_report,
    entity_spans,
    label_list,
    read_conll,
    read_token_data,
    read_token_jsonl,
    to_iob2,
)

CONLL = SHARED_DATA / "conll2003"

IOB1_TEXT = """-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER
"""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A WordPiece tokenizer whose vocabulary splits most words into several sub-tokens."""
    from transformers import BertTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *chars,
        *(f"##{c}" for c in chars),
        ".",
        ",",
        "eu",
        "call",
        "the",
        "in",
        "peter",
    ]
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_conll_converts_iob1_and_records_each_sentence_start(tmp_path):
    path = write(tmp_path, "train.txt", IOB1_TEXT)
    sentences = read_conll(path)
    assert [s.tokens for s in sentences] == [
        ["EU", "rejects", "German", "call"],
        ["Peter", "Blackburn", "Smith"],
    ]
    assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER", "B-PER"]]
    assert [s.where for s in sentences] == [f"{path} line 3", f"{path} line 8"]
    assert read_conll(path, scheme="iob1")[1].tags == ["B-PER", "I-PER", "B-PER"]
    with pytest.raises(InputError, match="tag scheme 'bio': expected one of auto, iob1, iob2"):
        read_conll(path, scheme="bio")


def test_strict_iob2_names_the_line_of_an_entity_starting_with_inside(tmp_path):
    path = write(tmp_path, "train.txt", IOB1_TEXT)
    with pytest.raises(InputError, match=r"train.txt line 3: tag 'I-ORG' starts an entity"):
        read_conll(path, scheme="iob2")
    iob2 = write(tmp_path, "train.iob2.txt", "a B-PER\nb I-PER\nc B-PER\n\nd O\ne B-LOC\n")
    assert [s.tags for s in read_conll(iob2, scheme="iob2")] == [["B-PER", "I-PER", "B-PER"], ["O", "B-LOC"]]


def test_to_iob2_and_scheme_detection():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "B-ORG"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG", "B-ORG"]
    assert to_iob2(iob1) == iob2
    assert to_iob2(iob2) == iob2
    assert detect_scheme([Sentence(["x"] * len(iob1), iob1, "f line 1")]) == "iob1"
    assert detect_scheme([Sentence(["x"] * len(iob2), iob2, "f line 1")]) == "iob2"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a x B-PER\nb x\n", r"line 2: expected 3 columns \(token ... tag\), found 2"),
        ("lonely\n", r"line 1: expected at least 2 columns"),
        ("a B-PER\nb NN\n", r"line 2: tag 'NN' is not O, B-TYPE or I-TYPE"),
        ("\n\n-DOCSTART- O\n\n", r"no sentences"),
    ],
)
def test_conll_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(InputError, match=message) as e:
        read_conll(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_plain_tags_are_read_as_they_are(tmp_path):
    path = write(tmp_path, "pos.txt", "The DT\ncat NN\n\nsat VBD\n")
    assert [s.tags for s in read_conll(path)] == [["DT", "NN"], ["VBD"]]
    with pytest.raises(InputError, match="line 1: tag 'DT' is not O"):
        read_conll(path, scheme="iob1")


def test_read_token_jsonl_strings_ids_and_errors(tmp_path):
    rows = [
        {"tokens": ["Ann", "lives", "in", "Oslo"], "tags": ["I-PER", "O", "O", "B-LOC"]},
        {"tokens": ["Bo"], "tags": ["B-PER"]},
    ]
    path = write(tmp_path, "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    sentences = read_token_data(path)
    assert [s.tags for s in sentences] == [["B-PER", "O", "O", "B-LOC"], ["B-PER"]]
    assert [s.where for s in sentences] == [f"{path} line 1", f"{path} line 2"]

    ids = write(tmp_path, "ids.jsonl", json.dumps({"words": ["Ann", "sings"], "ner": [1, 0]}) + "\n")
    names = ["O", "B-PER"]
    assert read_token_jsonl(ids, "words", "ner", id2label=names)[0].tags == ["B-PER", "O"]
    assert read_token_jsonl(ids, "words", "ner", id2label={"0": "O", "1": "B-PER"})[0].tags == ["B-PER", "O"]
    assert read_token_jsonl(ids, "words", "ner")[0].tags == ["1", "0"]
    with pytest.raises(InputError, match=r"ids.jsonl line 1: 'ner' item 1 is id 1, which id2label does not"):
        read_token_jsonl(ids, "words", "ner", id2label={0: "O"})

    mismatch = json.dumps({"tokens": ["a", "b"], "tags": ["O"]})
    bad = write(tmp_path, "bad.jsonl", json.dumps(rows[1]) + "\n" + mismatch)
    with pytest.raises(InputError, match=r"bad.jsonl line 2: 2 'tokens' but 1 'tags'"):
        read_token_data(bad)
    blank = write(tmp_path, "blank.jsonl", json.dumps({"tokens": ["a", " "], "tags": ["O", "O"]}) + "\n")
    with pytest.raises(InputError, match=r"blank.jsonl line 1: 'tokens' item 2 is ' '"):
        read_token_data(blank)
    missing = write(tmp_path, "missing.jsonl", json.dumps({"tokens": ["a"]}) + "\n")
    with pytest.raises(InputError, match=r"missing.jsonl line 1: field 'tags' must be a non-empty list"):
        read_token_data(missing)


def test_label_list_puts_o_first_then_type_with_b_before_i():
    sentences = [
        Sentence(["x"] * 3, ["I-PER", "B-LOC", "O"], "f line 1"),
        Sentence(["x"] * 3, ["B-PER", "I-LOC", "B-MISC"], "f line 5"),
    ]
    assert label_list(sentences) == ["O", "B-LOC", "I-LOC", "B-MISC", "B-PER", "I-PER"]


def test_first_sub_token_carries_the_tag_and_the_rest_are_ignored(tokenizer):
    sentences = [
        Sentence(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"], "f line 3"),
        Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"], "f line 8"),
    ]
    label2id = {t: i for i, t in enumerate(["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"])}
    features = encode_sentences(tokenizer, sentences, label2id, max_length=64)
    for s, f in zip(sentences, features, strict=False):
        expected = [-100]  # [CLS]
        for word, tag in zip(s.tokens, s.tags, strict=False):
            pieces = tokenizer.tokenize(word)
            expected += [label2id[tag]] + [-100] * (len(pieces) - 1)
        expected.append(-100)  # [SEP]
        assert f["labels"] == expected
        assert len(f["input_ids"]) == len(f["attention_mask"]) == len(f["token_type_ids"]) == len(expected)
    assert any(len(tokenizer.tokenize(w)) > 1 for w in sentences[0].tokens)  # the test exercises sub-words
    id2label = {i: t for t, i in label2id.items()}
    assert decode_predictions([f["labels"] for f in features], [f["labels"] for f in features], id2label) == [
        s.tags for s in sentences
    ]


def test_truncation_keeps_the_leading_words_only(tokenizer, capsys):
    sentence = Sentence(["rejects", "German", "call"], ["O", "B-MISC", "O"], "f line 1")
    label2id = {"O": 0, "B-MISC": 1}
    (feature,) = encode_sentences(tokenizer, [sentence], label2id, max_length=6)
    assert len(feature["input_ids"]) == 6
    kept = [y for y in feature["labels"] if y != -100]
    assert kept == [0, 1][: len(kept)] and len(kept) < 3
    assert "1 of 1 sentences lost words" in capsys.readouterr().err


def test_unknown_tag_names_the_sentence_and_token(tokenizer):
    sentence = Sentence(["Ann", "Oslo"], ["B-PER", "B-LOC"], "eval.txt line 40")
    with pytest.raises(InputError, match=r"eval.txt line 40: tag 'B-LOC' of token 2 \('Oslo'\) is not"):
        encode_sentences(tokenizer, [sentence], {"O": 0, "B-PER": 1}, max_length=32)


def test_decode_predictions_reads_only_first_sub_token_positions():
    labels = torch.tensor([[-100, 2, -100, 0, 1, -100], [-100, 1, -100, -100, -100, -100]])
    preds = torch.tensor([[0, 2, 1, 1, 1, 2], [2, 0, 2, 2, 2, 2]])
    id2label = {"0": "O", "1": "B-PER", "2": "I-PER"}  # string keys, as in a saved config.json
    assert decode_predictions(preds, labels, id2label) == [["I-PER", "B-PER", "B-PER"], ["O"]]


@pytest.mark.parametrize(
    "tags, spans",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),  # lenient start on I-
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # type change opens a new entity
        (["B-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
        (["O", "O", "B-ORG"], [("ORG", 2, 3)]),  # entity at the sentence end
        (["I-ORG", "NN", "I-ORG"], [("ORG", 0, 1), ("ORG", 2, 3)]),  # a non-IOB tag counts as outside
        (["O", "O"], []),
    ],
)
def test_entity_spans(tags, spans):
    assert entity_spans(tags) == spans


def test_entity_report_hand_computed():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"]]
    report = entity_report(true, pred)
    # true: PER, LOC, ORG; predicted: PER, ORG (wrong place), ORG; matched: PER and the second ORG.
    assert report["precision"] == pytest.approx(2 / 3)
    assert report["recall"] == pytest.approx(2 / 3)
    assert report["f1"] == pytest.approx(2 / 3)
    assert report["accuracy"] == pytest.approx(5 / 7)
    assert (report["num_entities"], report["num_predicted"]) == (3, 3)
    assert report["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert report["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_type"]["ORG"]["precision"] == pytest.approx(0.5)
    assert report["per_type"]["ORG"]["recall"] == 1.0
    assert report["per_type"]["ORG"]["f1"] == pytest.approx(2 / 3)


def test_entity_report_with_no_predicted_entities_is_zero_not_an_error():
    report = entity_report([["B-PER", "O"]], [["O", "O"]])
    assert (report["precision"], report["recall"], report["f1"]) == (0.0, 0.0, 0.0)
    assert report["accuracy"] == 0.5
    assert report["per_type"]["PER"]["support"] == 1
    empty = entity_report([["O"]], [["O"]])
    assert (empty["f1"], empty["accuracy"], empty["per_type"]) == (0.0, 1.0, {})


def test_entity_report_matches_seqeval_on_random_tags():
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval not installed (optional cross-check)")
    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    true = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(200)]
    pred = [[rng.choice(tags) if rng.random() < 0.3 else t for t in seq] for seq in true]
    ours = entity_report(true, pred)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(true, pred))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(true, pred))
    assert ours["f1"] == pytest.approx(seqeval.f1_score(true, pred))
    assert ours["accuracy"] == pytest.approx(seqeval.accuracy_score(true, pred))
    theirs = seqeval.classification_report(true, pred, output_dict=True)
    for kind, row in ours["per_type"].items():
        for key, theirs_key in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "f1-score"),
            ("support", "support"),
        ):
            assert row[key] == pytest.approx(theirs[kind][theirs_key]), (kind, key)
    assert 0 < ours["f1"] < 1


CONLL_STATS = {  # sentences and entities per type, as published (conll2003/SOURCE.txt)
    "train": (14041, {"PER": 6600, "LOC": 7140, "ORG": 6321, "MISC": 3438}),
    "valid": (3250, {"PER": 1842, "LOC": 1837, "ORG": 1341, "MISC": 922}),
    "test": (3453, {"PER": 1617, "LOC": 1668, "ORG": 1661, "MISC": 702}),
}


@pytest.mark.parametrize("split", list(CONLL_STATS))
def test_conll2003_iob1_conversion_equals_the_published_iob2_file(split):
    raw, converted = CONLL / f"{split}.txt", CONLL / f"{split}.iob2.txt"
    if not (raw.exists() and converted.exists()):
        pytest.skip(f"CoNLL-2003 not found under {CONLL}")
    sentences = read_conll(raw)
    expected = [
        line.split()[-1]
        for line in converted.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("-DOCSTART-")
    ]
    assert [t for s in sentences for t in s.tags] == expected
    with pytest.raises(InputError, match="starts an entity"):
        read_conll(raw, scheme="iob2")
    assert [s.tags for s in read_conll(converted, scheme="iob2")] == [s.tags for s in sentences]
    n_sentences, n_entities = CONLL_STATS[split]
    assert len(sentences) == n_sentences
    assert Counter(span[0] for s in sentences for span in entity_spans(s.tags)) == n_entities
