"""Instruction SFT data: reading Alpaca / chat records, prompt masking, truncation, packing, collation."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from conftest import SHARED_DATA

from sft.causal import (
    Record,
    collate_causal,
    cu_seqlens_from_position_ids,
    encode_records,
    pack,
    perplexity,
    read_instructions,
    render,
)
from sft.errors import InputError

ALPACA = SHARED_DATA / "alpaca" / "alpaca_data.json"
CORPUS = [
    "### Instruction:\nName a primary colour.\n\n### Response:\nRed is a primary colour.",
    "### Input:\nThe cat sat on the mat. What is two plus two? Four.",
    "Be brief. hello, how are you today? I am fine, thank you!",
] * 3
TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "how are you?"},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
]


def make_tokenizer(chat_template: str | None = None, eos: str = "<|end|>", bos: str | None = None):
    """A byte-level BPE trained in memory: decoding gives back the exact text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|end|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=eos, pad_token="<|pad|>", bos_token=bos
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def text(tokenizer, ids) -> str:
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def split_feature(feature):
    """(prompt ids, response ids) of an encoded record, checking the masked part is one leading block."""
    ids, labels = feature["input_ids"], feature["labels"]
    n_prompt = sum(1 for y in labels if y == -100)
    assert all(y == -100 for y in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:]  # token by token: every unmasked label is its own input token
    return ids[:n_prompt], ids[n_prompt:]


def alpaca(instruction, output, extra="", where="f record 1"):
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return Record(
        [{"role": "user", "content": user}, {"role": "assistant", "content": output}],
        where,
        instruction,
        extra,
    )


def test_read_alpaca_json_skips_empty_outputs_and_counts_them(tmp_path, capsys):
    rows = [
        {"instruction": "Name a colour.", "input": "", "output": "Red."},
        {"instruction": "Add.", "input": "2 and 2", "output": "4"},
        {"instruction": "Convert 20 inches to centimetres", "input": "", "output": ""},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    records = read_instructions(path)
    assert [r.messages for r in records] == [
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
        [{"role": "user", "content": "Add.\n\n2 and 2"}, {"role": "assistant", "content": "4"}],
    ]
    assert [(r.instruction, r.input, r.where) for r in records] == [
        ("Name a colour.", "", f"{path} record 1"),
        ("Add.", "2 and 2", f"{path} record 2"),
    ]
    assert "skipped 1 of 3 records with an empty response" in capsys.readouterr().err


def test_read_chat_jsonl(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n\n" + json.dumps({"messages": CHAT[1:3]}) + "\n")
    records = read_instructions(path)
    assert [r.messages for r in records] == [CHAT, CHAT[1:3]]
    assert [r.where for r in records] == [f"{path} line 1", f"{path} line 3"]
    assert records[0].instruction is None


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"messages": CHAT[:2]},
            r"line 2: the last message must be the assistant's reply, found role 'user'",
        ),
        ({"messages": [{"role": "bot", "content": "x"}]}, r"line 2: messages\[0\].role is 'bot'"),
        (
            {"messages": [CHAT[1], {"role": "assistant", "content": 3}]},
            r"line 2: messages\[1\].content must be a string",
        ),
        ({"messages": [CHAT[0], CHAT[2]]}, r"line 2: field 'messages' has no user message"),
        ({"messages": []}, r"line 2: field 'messages' must be a non-empty list"),
        (
            {"prompt": "x", "completion": "y"},
            r"line 2: expected fields 'instruction' and 'output' .* found prompt, ",
        ),
        ({"instruction": "x", "output": 4}, r"line 2: field 'output' must be a string, found int"),
        ({"instruction": " ", "output": "y"}, r"line 2: field 'instruction' is empty"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"instruction": "ok", "output": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError, match=message) as e:
        read_instructions(path)
    assert str(e.value).startswith(f"{path} line 2: ") and "\n" not in str(e.value)


def test_without_chat_template_prompt_is_alpaca_style_and_masked():
    tokenizer = make_tokenizer()
    records = [
        alpaca("Name a primary colour.", "Red is a primary colour."),
        alpaca("What is two plus two?", "Four.", extra="The cat sat."),
    ]
    features = encode_records(tokenizer, records, max_length=256)
    prompt, response = split_feature(features[0])
    assert text(tokenizer, prompt) == "### Instruction:\nName a primary colour.\n\n### Response:\n"
    assert text(tokenizer, response) == "Red is a primary colour.<|end|>"
    prompt, response = split_feature(features[1])
    assert text(tokenizer, prompt) == (
        "### Instruction:\nWhat is two plus two?\n\n### Input:\nThe cat sat.\n\n### Response:\n"
    )
    assert text(tokenizer, response) == "Four.<|end|>"
    assert [render(tokenizer, r) for r in records] == [split_feature(f) for f in features]


def test_without_chat_template_a_bos_token_opens_the_prompt():
    tokenizer = make_tokenizer(bos="<|bos|>")
    (feature,) = encode_records(tokenizer, [alpaca("Name a colour.", "Red.")], max_length=64)
    assert feature["input_ids"][0] == tokenizer.bos_token_id and feature["labels"][0] == -100


def test_chat_template_prompt_is_everything_before_the_last_reply():
    tokenizer = make_tokenizer(TEMPLATE)
    (feature,) = encode_records(tokenizer, [Record(CHAT, "chat.jsonl line 1")], max_length=256)
    prompt, response = split_feature(feature)
    assert text(tokenizer, prompt) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nhello<|end|>\n"
        "<|assistant|>\nhow are you?<|end|>\n"
        "<|user|>\nWhat is two plus two?<|end|>\n<|assistant|>\n"
    )
    # The template's own end of turn is the EOS, so no second one is appended.
    assert text(tokenizer, response) == "Four.<|end|>\n"
    assert render(tokenizer, Record(CHAT, "chat.jsonl line 1")) == (prompt, response)


def test_chat_template_without_eos_gets_one_appended():
    tokenizer = make_tokenizer(TEMPLATE, eos="<|eos|>")
    _, response = render(tokenizer, alpaca("Name a colour.", "Red."))
    assert text(tokenizer, response) == "Red.<|end|>\n<|eos|>"


def test_chat_template_that_does_not_extend_the_prompt_is_refused():
    template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )  # replies lack the "\n"
    with pytest.raises(InputError, match=r"f record 7: the chat template renders .* differently"):
        render(make_tokenizer(template), alpaca("Hi.", "Hello.", where="f record 7"))


def test_truncation_cuts_the_prompt_from_the_left_first(capsys):
    tokenizer = make_tokenizer()
    record = alpaca("Name a primary colour. The cat sat on the mat.", "Red is a primary colour.")
    prompt, response = render(tokenizer, record)
    budget = len(response) + 3
    (feature,) = encode_records(tokenizer, [record], max_length=budget)
    assert feature["input_ids"] == prompt[-3:] + response
    assert feature["labels"] == [-100] * 3 + response
    assert "1 of 1 records were truncated" in capsys.readouterr().err


def test_a_reply_longer_than_max_length_is_cut_and_a_prompt_too_long_drops_the_record(capsys):
    tokenizer = make_tokenizer()
    long_reply = alpaca("Hi.", "The cat sat on the mat. " * 20)
    prompt, response = render(tokenizer, long_reply)
    max_length = len(response) - 1
    assert len(prompt) < max_length
    long_prompt = alpaca("The cat sat on the mat. " * 40, "The cat sat on the mat. " * 40)
    assert all(len(part) >= max_length for part in render(tokenizer, long_prompt))
    features = encode_records(tokenizer, [long_reply, long_prompt], max_length=max_length)
    assert len(features) == 1
    assert features[0]["input_ids"] == prompt + response[: max_length - len(prompt)]
    assert "1 dropped" in capsys.readouterr().err


def lengths_features(lengths):
    return [
        {"input_ids": [100 * k + i for i in range(n)], "labels": [1000 * k + i for i in range(n)]}
        for k, n in enumerate(lengths)
    ]


def test_pack_is_first_fit_in_order():
    rows = pack(lengths_features([6, 5, 4, 3, 2]), max_length=10)
    assert [r["seq_lens"] for r in rows] == [[6, 4], [5, 3, 2]]
    assert rows[0]["position_ids"] == [*range(6), *range(4)]
    assert rows[0]["labels"] == [-100, *range(1, 6), -100, *range(2001, 2004)]
    with pytest.raises(ValueError, match="11 tokens"):
        pack(lengths_features([11]), max_length=10)


def test_packing_keeps_every_token_once_and_never_crosses_sequences():
    tokenizer = make_tokenizer()
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "what", "is", "two", "plus", "two"]
    records = [alpaca(" ".join(words[: 1 + i % 7]), " ".join(words[i % 5 :]) + ".") for i in range(40)]
    features = encode_records(tokenizer, records, max_length=160)
    rows = pack(features, max_length=160)
    assert len(rows) < len(features) / 2
    pieces = []
    for row in rows:
        n_tokens = sum(row["seq_lens"])
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == n_tokens <= 160
        assert row["position_ids"] == [p for n in row["seq_lens"] for p in range(n)]
        start = 0
        for n in row["seq_lens"]:
            assert row["labels"][start] == -100
            ids, labels = row["input_ids"][start : start + n], row["labels"][start + 1 : start + n]
            pieces.append((tuple(ids), tuple(labels)))
            start += n
    original = [(tuple(f["input_ids"]), tuple(f["labels"][1:])) for f in features]
    assert sorted(pieces) == sorted(original)


def test_collate_pads_right_and_cu_seqlens_follow_position_ids():
    rows = pack(lengths_features([3, 2, 4]), max_length=5)  # rows: [3, 2] and [4]
    batch = collate_causal(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 1, 2, 100, 101], [200, 201, 202, 203, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 1, 2, -100, 1001], [-100, 2001, 2002, 2003, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]
    assert all(t.dtype == torch.long for t in batch.values())
    cu = cu_seqlens_from_position_ids(batch["position_ids"])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 5, 10]
    unpacked = collate_causal(lengths_features([2, 4]), pad_id=7)
    assert unpacked["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert unpacked["input_ids"][0].tolist() == [0, 1, 7, 7]


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(1e5) == math.inf


def test_real_alpaca_file_reads_in_full(capsys):
    if not ALPACA.exists():
        pytest.skip(f"Alpaca data not found at {ALPACA}")
    raw = json.loads(ALPACA.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    records = read_instructions(ALPACA)
    seconds = time.perf_counter() - t0
    kept = [r for r in raw if r["output"].strip()]
    assert len(raw) == 52002 and len(records) == len(kept) == 52002 - 28
    assert "skipped 28 of 52002 records" in capsys.readouterr().err
    assert [(r.instruction, r.input, r.messages[-1]["content"]) for r in records] == [
        (r["instruction"], r["input"], r["output"]) for r in kept
    ]
    assert seconds < 30, f"reading took {seconds:.1f}s"
    features = encode_records(make_tokenizer(), records[:300], max_length=128)
    rows = pack(features, max_length=128)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(f["input_ids"]) for f in features)
