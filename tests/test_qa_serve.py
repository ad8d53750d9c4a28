"""serve.qa: windows and span search in numpy agree with transformers' question-answering pipeline.

A tiny random BERT QA model with the packaged MiniLM tokenizer; the windows come from `tokenizers` alone,
the logits from the PyTorch model, the answers from serve.qa, and the pipeline is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from serve.qa import (
    Question,
    QuestionAnswerer,
    WindowingError,
    encode_questions,
    make_windows,
    pipeline_answers,
    squad_answer,
    top_spans,
)

CONTEXTS = [
    (
        "Where do penguins live?",
        "Penguins live almost exclusively in the Southern Hemisphere, mostly in Antarctica.",
    ),
    ("Who wrote it?", "The novel was written by Mary Shelley in 1818."),
    (
        "When was the bridge finished?",
        " ".join(
            f"Paragraph {i}: the old stone bridge over the river was repaired, painted and widened again."
            for i in range(12)
        )
        + " The bridge was finished in 1889, after a long delay.",
    ),
]


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory):
    from conftest import tiny_bert_for_qa
    from transformers import AutoTokenizer

    from sft.models import default_model_path

    path = tmp_path_factory.mktemp("tiny-qa") / "model"
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    model = tiny_bert_for_qa(tokenizer.vocab_size)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def _logits(model, questions: list[Question]):
    import torch

    out = []
    for q in questions:
        starts, ends = [], []
        for w in q.windows:
            with torch.no_grad():
                r = model(
                    input_ids=torch.tensor([w.ids]),
                    attention_mask=torch.tensor([w.attention_mask]),
                    token_type_ids=torch.tensor([w.type_ids]),
                )
            starts.append(r.start_logits[0].numpy())
            ends.append(r.end_logits[0].numpy())
        out.append((starts, ends))
    return out


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"top_k": 3},
        {"top_k": 2, "handle_impossible_answer": True},
        {"max_answer_len": 4, "align_to_words": False},
    ],
)
def test_numpy_answers_match_the_pipeline(tiny_qa, options):
    from tokenizers import Tokenizer
    from transformers import pipeline

    path, model, tokenizer = tiny_qa
    max_length, stride = 64, 16
    windowed = make_windows(Tokenizer.from_file(str(path / "tokenizer.json")), max_length, stride)
    questions = encode_questions(windowed, [q for q, _ in CONTEXTS], [c for _, c in CONTEXTS])
    assert [len(q.windows) for q in questions][:2] == [1, 1]
    assert len(questions[2].windows) >= 3  # the long context needs several windows
    pipe = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    for q, (starts, ends) in zip(questions, _logits(model, questions), strict=True):
        ours = pipeline_answers(q, starts, ends, **options)
        theirs = pipe(
            question=q.question, context=q.context, max_seq_len=max_length, doc_stride=stride, **options
        )
        theirs = theirs if isinstance(theirs, list) else [theirs]
        assert [(a["answer"], a["start"], a["end"]) for a in ours] == [
            (a["answer"], a["start"], a["end"]) for a in theirs
        ]
        np.testing.assert_allclose([a["score"] for a in ours], [a["score"] for a in theirs], rtol=1e-4)
        for a in ours:
            assert q.context[a["start"] : a["end"]] == a["answer"]


def test_windows_match_the_transformers_tokenizer(tiny_qa):
    from tokenizers import Tokenizer

    path, _, tokenizer = tiny_qa
    q, c = CONTEXTS[2]
    windowed = make_windows(Tokenizer.from_file(str(path / "tokenizer.json")), 48, 8)
    ours = encode_questions(windowed, [q], [c])[0].windows
    theirs = tokenizer(
        q, c, truncation="only_second", max_length=48, stride=8, return_overflowing_tokens=True
    )
    assert [w.ids for w in ours] == theirs["input_ids"]
    assert all(len(w.ids) <= 48 for w in ours)


def test_a_question_longer_than_the_window_is_one_clear_error(tiny_qa):
    from tokenizers import Tokenizer

    path, _, _ = tiny_qa
    windowed = make_windows(Tokenizer.from_file(str(path / "tokenizer.json")), 16, 4)
    with pytest.raises(WindowingError, match=r"inputs\[0\]: the question is too long"):
        encode_questions(windowed, ["why " * 20], ["because it is so, and that is all there is."])
    with pytest.raises(WindowingError, match="doc_stride"):
        make_windows(Tokenizer.from_file(str(path / "tokenizer.json")), 16, 16)


def test_top_spans_by_hand():
    start = np.array([9.0, 1.0, 3.0, 0.0, 2.0])
    end = np.array([9.0, 0.0, 1.0, 4.0, 0.5])
    allowed = np.array([False, True, True, True, True])
    # pairs (s, e) with 1 <= s <= e <= s + 1: (1,1)=1 (1,2)=2 (2,2)=4 (2,3)=7 (3,3)=4 (3,4)=0.5 (4,4)=2.5
    assert top_spans(start, end, allowed, max_answer_length=2, k=3) == [(2, 3, 7.0), (2, 2, 4.0), (3, 3, 4.0)]
    assert top_spans(start, end, allowed, max_answer_length=1, k=1) == [(2, 2, 4.0)]
    assert top_spans(start, end, np.zeros(5, dtype=bool), max_answer_length=3, k=2) == []


def test_squad_answer_searches_all_windows_and_the_null_threshold():
    context = "alpha beta gamma delta"
    offsets = [(0, 0), (0, 5), (6, 10), (11, 16), (17, 22)]
    allowed = np.array([False, True, True, True, True])
    w1 = (np.array([1.0, 5.0, 0.0, 0.0, 0.0]), np.array([1.0, 0.0, 4.0, 0.0, 0.0]))  # best: "alpha beta" 9
    w2 = (np.array([2.0, 0.0, 0.0, 6.0, 0.0]), np.array([3.0, 0.0, 0.0, 0.0, 5.0]))  # best: "gamma delta" 11
    windows = [(offsets, allowed), (offsets, allowed)]
    text, margin = squad_answer(context, windows, [w1[0], w2[0]], [w1[1], w2[1]])
    assert (text, margin) == ("gamma delta", 2.0 - 11.0)  # null = min(1+1, 2+3)
    assert (
        squad_answer(context, windows, [w1[0], w2[0]], [w1[1], w2[1]], max_answer_length=1)[0] == "gamma"
    )  # 6 + 0
    big_null = [np.array([20.0, 5.0, 0.0, 6.0, 0.0])] * 2, [np.array([20.0, 0.0, 4.0, 0.0, 5.0])] * 2
    assert squad_answer(context, windows, *big_null, version_2=True)[0] == ""
    assert squad_answer(context, windows, *big_null, version_2=True, null_threshold=40.0)[0] == "gamma delta"
    assert squad_answer(context, windows, *big_null, version_2=False)[0] == "gamma delta"


class _TorchSession:
    """Stands in for onnxruntime: runs the PyTorch model on the padded feeds."""

    def __init__(self, model):
        self.model = model

    def run(self, feeds):
        import torch

        with torch.no_grad():
            out = self.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        return {"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()}


def test_runner_batches_every_window_and_matches_the_pipeline(tiny_qa, monkeypatch):
    from transformers import pipeline

    import serve.runner
    from serve.bundle import Bundle

    path, model, tokenizer = tiny_qa
    monkeypatch.setattr(serve.runner, "OnnxModel", _FakeOnnx(model))
    bundle = Bundle(path, {"task": "question-answering", "max_length": 64, "doc_stride": 16, "sha256": {}})
    runner = QuestionAnswerer(bundle)
    answers = runner.predict([q for q, _ in CONTEXTS], [c for _, c in CONTEXTS], top_k=1)
    items = runner.encode(CONTEXTS)  # sft-predict's path: (question, context) rows, sorted by cost
    assert len(items[2].ids) == sum(len(w.ids) for w in items[2].windows) > 64
    assert runner.run(items, [{}] * len(items)) == answers
    from serve.predict import _predict_chunk

    chunked = _predict_chunk(runner, CONTEXTS, 2, 20)  # length-sorted batches of two, back in input order
    assert [[(a["answer"], a["start"]) for a in r] for r in chunked] == [
        [(a["answer"], a["start"]) for a in r] for r in answers
    ]
    assert [r[0]["score"] for r in chunked] == pytest.approx([r[0]["score"] for r in answers], rel=1e-5)
    pipe = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    for (q, c), ours in zip(CONTEXTS, answers, strict=True):
        theirs = pipe(question=q, context=c, max_seq_len=64, doc_stride=16)
        assert (ours[0]["answer"], ours[0]["start"], ours[0]["end"]) == (
            theirs["answer"],
            theirs["start"],
            theirs["end"],
        )
        # padding the shorter windows in one batch moves the logits only by float noise
        assert ours[0]["score"] == pytest.approx(theirs["score"], rel=1e-3)


class _FakeOnnx:
    def __init__(self, model):
        self.torch_model = model

    def __call__(self, *_args, **_kwargs):
        fake = _TorchSession(self.torch_model)
        fake.session = None
        fake.input_names = ["input_ids", "attention_mask", "token_type_ids"]
        return fake


def test_serve_qa_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = "import serve.qa, sys; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not loaded & {"torch", "transformers", "optimum"}


def test_inference_api_request_and_response_shapes():
    from serve.qa import QARequestError, parse_request, record, response

    one = {"inputs": {"question": "Who?", "context": "Mary did."}, "parameters": {"top_k": 2}}
    assert parse_request(one) == (["Who?"], ["Mary did."], {"top_k": 2}, True)
    many = {"inputs": [{"question": "a?", "context": "x"}, {"question": "b?", "context": "y"}]}
    assert parse_request(many) == (["a?", "b?"], ["x", "y"], {}, False)
    for body, message in (
        ({"inputs": {"question": "Who?"}}, 'inputs: "context" must be a non-empty string'),
        ({"inputs": [{"question": "a?", "context": ""}]}, r'inputs\[0\]: "context"'),
        ({"inputs": []}, "non-empty list"),
        ({"question": "a?"}, '"inputs"'),
        ({"inputs": {"question": "a", "context": "b"}, "parameters": {"top_k": 0}}, "parameters.top_k"),
        (
            {"inputs": {"question": "a", "context": "b"}, "parameters": {"doc_strid": 3}},
            'unknown "doc_strid"',
        ),
    ):
        with pytest.raises(QARequestError, match=message):
            parse_request(body)
    a = {"answer": "Mary", "score": 0.5, "start": 0, "end": 4}
    b = {"answer": "did", "score": 0.25, "start": 5, "end": 8}
    assert response([[a]], True) == a
    assert response([[a, b]], True) == [a, b]
    assert response([[a], [b]], False) == [a, b]
    assert response([[a], []], False) == [a, []]  # as the pipeline: one answer is unwrapped
    assert record(3, [a, b]) == {"index": 3, **a}
    assert record(4, []) == {"index": 4, "answer": "", "score": 0.0, "start": 0, "end": 0}


@pytest.fixture(scope="module")
def qa_bundle(tiny_qa, tmp_path_factory):
    from export.onnx import export_onnx

    path, _, _ = tiny_qa
    report = export_onnx(path, tmp_path_factory.mktemp("qa-bundle") / "bundle", max_length=64)
    return report.bundle_dir


def _pipeline_answers(tiny_qa, bundle):
    import json

    from transformers import pipeline

    _, model, tokenizer = tiny_qa
    manifest = json.loads((bundle / "manifest.json").read_text())
    pipe = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    return [
        pipe(question=q, context=c, max_seq_len=manifest["max_length"], doc_stride=manifest["doc_stride"])
        for q, c in CONTEXTS
    ]


def test_sft_predict_and_the_daemon_answer_as_the_pipeline(tiny_qa, qa_bundle, tmp_path):
    import json

    import httpx
    from conftest import run_cli
    from serve_support import Daemon

    want = _pipeline_answers(tiny_qa, qa_bundle)
    rows = tmp_path / "questions.jsonl"
    rows.write_text("".join(json.dumps({"question": q, "context": c}) + "\n" for q, c in CONTEXTS))
    proc = run_cli("sft-predict", str(qa_bundle), "-i", str(rows), "-o", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["index"] for r in got] == [0, 1, 2]
    for ours, theirs in zip(got, want, strict=True):
        assert (ours["answer"], ours["start"], ours["end"]) == (
            theirs["answer"],
            theirs["start"],
            theirs["end"],
        )
        assert ours["score"] == pytest.approx(theirs["score"], rel=1e-3)

    daemon = Daemon(qa_bundle)
    try:
        q, c = CONTEXTS[0]
        one = httpx.post(daemon.url + "/predict", json={"inputs": {"question": q, "context": c}}, timeout=60)
        assert one.status_code == 200, one.text
        assert one.json()["answer"] == want[0]["answer"]
        many = httpx.post(
            daemon.url + "/",
            json={"inputs": [{"question": q, "context": c} for q, c in CONTEXTS]},
            timeout=60,
        )
        assert many.status_code == 200, many.text
        for ours, theirs in zip(many.json(), want, strict=True):
            assert (ours["answer"], ours["start"], ours["end"]) == (
                theirs["answer"],
                theirs["start"],
                theirs["end"],
            )
            assert ours["score"] == pytest.approx(theirs["score"], rel=1e-3)
        doc = httpx.get(daemon.url + "/openapi.json").json()
        assert (
            "QuestionContext" in doc["components"]["schemas"]
            and "/v2/models/{name}/infer" not in doc["paths"]
        )
        bad = httpx.post(daemon.url + "/predict", json={"inputs": {"question": q}}, timeout=60)
        assert bad.status_code == 422 and set(bad.json()) == {"error", "error_type"}
        long_q = httpx.post(
            daemon.url + "/predict", json={"inputs": {"question": "why " * 200, "context": c}}, timeout=60
        )
        assert long_q.status_code == 422, long_q.text
    finally:
        daemon.stop()
