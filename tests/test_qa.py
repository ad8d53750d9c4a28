"""sft.qa: SQuAD metric by hand, reading and checking SQuAD / JSONL / CSV data, windows and labels, loss."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tiny_bert_for_qa

from sft.errors import InputError
from sft.qa import (
    QA_DEFAULTS,
    QuestionAnswering,
    encode_windows,
    exact_match,
    f1_score,
    normalize_answer,
    read_qa,
    squad_metrics,
)

XQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "xquad" / "xquad.en.json"
CONTEXT = "The Eiffel Tower was completed in 1889. It stands in Paris, on the Champ de Mars."


def _squad(path: Path, qas, context=CONTEXT, version="1.1") -> Path:
    data = {"version": version, "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _qa(qid, question, text, start=None, context=CONTEXT):
    start = context.index(text) if start is None else start
    return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}]}


# -- the metric --------------------------------------------------------------------------------------------


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("  The  Champ-de-Mars, in PARIS! ") == "champdemars in paris"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # pred {in, paris, france} vs gold {paris}: P = 1/3, R = 1, F1 = 2·(1/3)/(4/3) = 0.5
    assert f1_score("in Paris, France", "Paris") == pytest.approx(0.5)
    # repeated tokens count by multiplicity: pred {a:2 -> "b b c"} vs "b c c": common b1 c1 = 2, P = R = 2/3
    assert f1_score("b b c", "b c c") == pytest.approx(2 / 3)
    assert f1_score("nothing", "else") == 0.0
    # empty answers: 0 in v1.1, a match in v2.0
    assert f1_score("", "") == 0.0
    assert f1_score("", "", version_2=True) == 1.0
    assert f1_score("the", "", version_2=True) == 1.0  # "the" normalises to nothing


def test_squad_metrics_take_the_max_over_gold_answers_in_percent():
    golds = {"q1": ["Paris", "in Paris"], "q2": ["1889"], "q3": ["the Champ de Mars"]}
    preds = {"q1": "in Paris", "q2": "1890", "q3": "Champ de Mars park"}
    m = squad_metrics(preds, golds)
    # EM: 1, 0, 0 -> 33.33; F1: 1, 0, P=3/4 R=1 -> 6/7
    assert m["exact_match"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 0 + 6 / 7) / 3)
    assert m["examples"] == 3


def test_squad_v2_scores_no_answer_questions():
    golds = {"a": ["Paris"], "b": [], "c": []}
    m = squad_metrics({"a": "Paris", "b": "", "c": "Paris"}, golds, version_2=True)
    assert m["exact_match"] == pytest.approx(200 / 3) and m["f1"] == pytest.approx(200 / 3)
    assert (m["has_ans_exact"], m["no_ans_exact"], m["no_ans_total"]) == (100.0, 50.0, 2)


# -- reading -----------------------------------------------------------------------------------------------


def test_reads_squad_json_and_checks_answer_starts(tmp_path):
    ok = _squad(tmp_path / "ok.json", [_qa("1", "When?", "1889"), _qa("2", "Where?", "Paris")])
    ex = read_qa(str(ok), QA_DEFAULTS.get, version_2=False)
    assert [(e.id, e.answers) for e in ex] == [("1", [("1889", 34)]), ("2", [("Paris", 53)])]
    bad = _squad(tmp_path / "bad.json", [_qa("1", "When?", "1889", start=30)])
    with pytest.raises(InputError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\]: answer_start 30"):
        read_qa(str(bad), QA_DEFAULTS.get, version_2=False)


def test_unanswerable_questions_need_version_2(tmp_path):
    path = _squad(
        tmp_path / "v2.json",
        [_qa("1", "When?", "1889"), {"id": "2", "question": "Who?", "answers": [], "is_impossible": True}],
    )
    with pytest.raises(InputError, match="--version-2-with-negative"):
        read_qa(str(path), QA_DEFAULTS.get, version_2=False)
    assert [e.answers for e in read_qa(str(path), QA_DEFAULTS.get, version_2=True)] == [[("1889", 34)], []]


def test_reads_jsonl_and_csv_rows(tmp_path):
    rows = [
        {"question": "When?", "context": CONTEXT, "answers": {"text": ["1889"], "answer_start": [34]}},
        {"question": "Where?", "context": CONTEXT, "answers": [{"text": "Paris", "answer_start": 53}]},
    ]
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [e.answers for e in read_qa(str(jsonl), QA_DEFAULTS.get, version_2=False)] == [
        [("1889", 34)],
        [("Paris", 53)],
    ]
    import csv

    with (tmp_path / "qa.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "context", "answers"])
        for r in rows:
            w.writerow([r["question"], r["context"], json.dumps(r["answers"])])
    assert len(read_qa(str(tmp_path / "qa.csv"), QA_DEFAULTS.get, version_2=False)) == 2


def test_a_missing_column_is_named(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "q", "text": CONTEXT, "answers": []}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="no column 'context' for --context-column"):
        read_qa(str(path), QA_DEFAULTS.get, version_2=False)


@pytest.mark.skipif(not XQUAD.is_file(), reason="../shared/data/xquad not present")
def test_xquad_reads_clean():
    examples = read_qa(str(XQUAD), QA_DEFAULTS.get, version_2=False)
    assert len(examples) == 1190
    assert len({e.context for e in examples}) == 240


# -- windows, labels, loss, evaluation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from sft.models import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return tiny_bert_for_qa(tokenizer.vocab_size)


def _long_examples(tmp_path):
    filler = " ".join(f"Sentence {i} says nothing about towers or years at all." for i in range(10))
    context = filler + " " + CONTEXT + " " + filler
    path = _squad(
        tmp_path / "long.json",
        [
            _qa("1", "When was it completed?", "1889", context=context),
            _qa("2", "Where?", "Paris", context=context),
        ],
        context=context,
    )
    return read_qa(str(path), QA_DEFAULTS.get, version_2=False)


def test_windows_label_the_answer_or_cls(tokenizer, tmp_path):
    examples = _long_examples(tmp_path)
    rows = encode_windows(tokenizer, examples, max_length=48, doc_stride=16)
    assert len(rows) > 2 * 3  # each long context gives several windows
    for r in rows:
        ex = examples[r["example"]]
        text, start = ex.answers[0]
        s, e = r["start_positions"], r["end_positions"]
        if s == 0:
            assert e == 0
            ctx = [o for o, a in zip(r["offsets"], r["allowed"], strict=True) if a]
            assert ctx[0][0] > start or ctx[-1][1] < start + len(text)  # the window misses the answer
        else:
            assert r["allowed"][s] and r["allowed"][e]
            assert ex.context[r["offsets"][s][0] : r["offsets"][e][1]] == text
    assert {r["example"] for r in rows if r["start_positions"]} == {0, 1}


def _task(examples, **cfg):
    task = QuestionAnswering(
        SimpleNamespace(**{**QA_DEFAULTS, "label_smoothing": 0.0, "max_length": 48, **cfg})
    )
    task.eval_ex = examples
    return task


def test_loss_through_our_kernel_equals_the_model_loss(tokenizer, tiny_model, tmp_path):
    examples = _long_examples(tmp_path)
    rows = encode_windows(tokenizer, examples, max_length=48, doc_stride=16)
    task = _task(examples)
    batch = task.collate(rows, tokenizer.pad_token_id, "cpu")
    ours = task.loss(tiny_model, batch, "torch")
    theirs = tiny_model(**batch).loss  # transformers: (CE(start) + CE(end)) / 2
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5)


def test_oracle_logits_give_100_and_the_model_gives_metrics(tokenizer, tiny_model, tmp_path):
    examples = _long_examples(tmp_path)
    rows = encode_windows(tokenizer, examples, max_length=48, doc_stride=16)
    task = _task(examples)
    starts, ends = [], []
    for r in rows:  # logits that point at the labels: 10 where labelled, 0 elsewhere
        s, e = np.zeros(len(r["input_ids"])), np.zeros(len(r["input_ids"]))
        s[r["start_positions"]] = e[r["end_positions"]] = 10.0
        starts.append(s)
        ends.append(e)
    assert task.predictions(rows, starts, ends) == {"1": "1889", "2": "Paris"}
    metrics = task.evaluate(tiny_model, rows, tokenizer.pad_token_id, "cpu", 4, "torch")
    assert metrics["examples"] == 2 and 0.0 <= metrics["f1"] <= 100.0 and metrics["loss"] > 0


def _secret_word_squad(path: Path, n: int, seed: int) -> Path:
    """Questions whose answer is the word after "the secret word is", somewhere in a long context."""
    import random

    rng = random.Random(seed)
    words = "red blue green apple river stone cloud music paper window garden silver".split()
    filler = "a man walked to the old market and bought some bread then he went home".split()
    paragraphs = []
    for i in range(n):
        word = rng.choice(words)
        left, right = (" ".join(rng.choices(filler, k=rng.randint(0, 30))) for _ in range(2))
        context = f"{left} the secret word is {word} . {right}".strip()
        qa = _qa(str(i), "what is the secret word?", word, context.index(f"is {word}") + 3, context)
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def test_training_learns_to_find_the_answer(tokenizer, tiny_model, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from sft import load_config, train

    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    cfg = load_config(
        overrides={
            "task": "question-answering",
            "train": str(_secret_word_squad(tmp_path / "train.json", 40, 0)),
            "eval": str(_secret_word_squad(tmp_path / "eval.json", 30, 1)),
            "model": str(tmp_path / "model"),
            "output": str(tmp_path / "qa"),
            "epochs": 4,
            "batch_size": 16,
            "lr": 5e-3,
            "max_length": 48,
            "doc_stride": 16,
            "progress": False,
            "tensorboard": False,
        }
    )
    result = train(cfg)
    assert result.metrics["examples"] == 30
    assert result.metrics["f1"] > 80, result.metrics  # held-out contexts, answers at new positions
    assert AutoModelForQuestionAnswering.from_pretrained(tmp_path / "qa").config.model_type == "bert"


def test_onnx_export_validates_and_serves_the_pipeline_answers(tokenizer, tiny_model, tmp_path):
    """Optimum's question-answering graph, checked against PyTorch, then served by serve.qa with
    onnxruntime: the answers of transformers' pipeline on the PyTorch model, also over several windows."""
    from transformers import pipeline

    from export.checkpoint import Checkpoint
    from export.convert import export_with_optimum
    from export.qa import compare_qa, qa_manifest
    from export.runners import TorchModel
    from serve.bundle import Bundle
    from serve.qa import QuestionAnswerer

    model_dir, out = tmp_path / "model", tmp_path / "onnx"
    tiny_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    export_with_optimum(model_dir, out, "question-answering", None)
    reference = TorchModel.__new__(TorchModel)  # TorchModel's loader knows only sft's other tasks so far
    reference.model, reference.tokenizer, reference.max_length, reference.task = (
        tiny_model,
        tokenizer,
        64,
        "qa",
    )
    reference.accepts = {"input_ids", "attention_mask", "token_type_ids"}
    diffs = compare_qa(reference, out, [CONTEXT, "short", " ".join([CONTEXT] * 5)])
    assert {d.name for d in diffs} == {"start_logits", "end_logits"}
    assert max(d.max_abs for d in diffs) < 1e-4

    config = json.loads((model_dir / "config.json").read_text())
    manifest = qa_manifest(
        out, Checkpoint(model_dir, config, "question-answering", tokenizer_dir=model_dir), 64
    )
    assert (manifest["task"], manifest["labels"], manifest["max_length"]) == ("question-answering", [], 64)
    assert (manifest["doc_stride"], manifest["max_answer_length"]) == (
        32,
        30,
    )  # 128 capped at max_length // 2
    runner = QuestionAnswerer(Bundle(out, {**manifest, "doc_stride": 16}), threads=1)
    long_context = (
        " ".join(f"Line {i} of the notes talks about other towers." for i in range(8)) + " " + CONTEXT
    )
    questions = ["When was it completed?", "Where does it stand?"]
    contexts = [CONTEXT, long_context]
    assert len(runner.questions(questions, contexts)[1].windows) > 2
    pipe = pipeline("question-answering", model=tiny_model, tokenizer=tokenizer, device="cpu")
    for q, c, ours in zip(questions, contexts, runner.predict(questions, contexts, top_k=2), strict=True):
        theirs = pipe(question=q, context=c, max_seq_len=64, doc_stride=16, top_k=2)
        assert [(a["answer"], a["start"], a["end"]) for a in ours] == [
            (a["answer"], a["start"], a["end"]) for a in theirs
        ]
        np.testing.assert_allclose([a["score"] for a in ours], [a["score"] for a in theirs], rtol=1e-3)
