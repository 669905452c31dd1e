"""Overflow policies for conversations over max_length: whole turns only, exact masks, counts."""

from __future__ import annotations

import pytest

from tempering.chat.encoding import ConversationEncoder
from tempering.data.sources import BadRecordLog, Conversation
from tempering.data.tokenization import encode_rows, tokenize_conversations
from tempering.plugin_manager import build_plugin_manager, build_registry
from tests.conftest import trained_texts

REGISTRY = build_registry(build_plugin_manager(entry_points=False))


def _conversation(turns: int, words: int = 6) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}]
    for t in range(turns):
        messages += [{"role": "user", "content": f"question {t} " + "word " * words},
                     {"role": "assistant", "content": f"answer {t}"}]
    return messages


def _encoder(tok, masking="last_assistant"):
    return ConversationEncoder(tok, chat_template="chatml", masking=masking, registry=REGISTRY)


def _rows(encoder, messages, max_length, policy):
    return encode_rows(encoder, messages, max_length, REGISTRY.get("overflow_policy", policy))


def test_drop_oldest_turns_keeps_the_system_message_and_the_most_recent_turns(tiny_tokenizer):
    enc = _encoder(tiny_tokenizer)
    messages = _conversation(6)
    full = len(enc.encode(messages).input_ids)
    limit = full * 3 // 5
    (row,) = _rows(enc, messages, limit, "drop_oldest_turns")
    # The reference: the system message plus the longest suffix of whole turns that fits.
    fits = [k for k in range(6) if len(enc.encode(messages[:1] + messages[1 + 2 * k:]).input_ids)
            <= limit]
    want = enc.encode(messages[:1] + messages[1 + 2 * fits[0]:])
    assert fits[0] > 0 and row["input_ids"] == want.input_ids and row["labels"] == want.labels
    assert row["overflow_rows"] == 1 and len(row["input_ids"]) <= limit
    assert trained_texts(tiny_tokenizer, want) == ["answer 5<|im_end|>"]
    text = tiny_tokenizer.decode(row["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    kept = [m["content"] for m in messages if m["content"] in text]
    assert kept == [messages[0]["content"]] + [m["content"] for m in messages[1 + 2 * fits[0]:]]


def test_drop_oldest_turns_ends_at_the_last_assistant_turn_and_drops_what_cannot_fit(
        tiny_tokenizer):
    enc = _encoder(tiny_tokenizer)
    messages = _conversation(3) + [{"role": "user", "content": "trailing " * 30}]
    (row,) = _rows(enc, messages, len(enc.encode(messages[:-1]).input_ids), "drop_oldest_turns")
    assert row["input_ids"] == enc.encode(messages[:-1]).input_ids  # only the trailing turn went
    (bad,) = _rows(enc, _conversation(2, words=200), 60, "drop_oldest_turns")
    assert bad["error_kind"] == "too_long" and "last turn alone" in bad["error"]


def test_split_per_turn_makes_one_example_per_trained_turn(tiny_tokenizer):
    enc = _encoder(tiny_tokenizer, masking="all_assistant")
    messages = _conversation(5)
    limit = len(enc.encode(messages).input_ids) // 2
    rows = _rows(enc, messages, limit, "split_per_turn")
    assert len(rows) == 5 and rows[0]["overflow_rows"] == 5
    assert [r["overflow_rows"] for r in rows[1:]] == [0] * 4
    for t, row in enumerate(rows):
        assert len(row["input_ids"]) <= limit
        text = tiny_tokenizer.decode(row["input_ids"])
        assert text.rstrip().endswith(f"answer {t}<|im_end|>")  # ends with its own turn
        assert text.startswith("<|im_start|>system\nBe brief.")
        labelled = [i for i, label in zip(row["input_ids"], row["labels"], strict=True)
                    if label != -100]
        assert tiny_tokenizer.decode(labelled) == f"answer {t}<|im_end|>"  # that turn only
    # The late turns lost their oldest history; the early ones kept all of theirs.
    assert "question 0 " in tiny_tokenizer.decode(rows[1]["input_ids"])
    assert "question 0 " not in tiny_tokenizer.decode(rows[4]["input_ids"])


def test_split_per_turn_follows_the_masking_strategy(tiny_tokenizer):
    enc = _encoder(tiny_tokenizer, masking="last_assistant")
    messages = _conversation(4)
    rows = _rows(enc, messages, len(enc.encode(messages).input_ids) - 1, "split_per_turn")
    assert len(rows) == 1 and "answer 3" in tiny_tokenizer.decode(rows[0]["input_ids"])


@pytest.mark.parametrize("policy, rows, fitted, dropped", [
    ("drop", 2, 0, 2), ("drop_oldest_turns", 4, 2, 0), ("split_per_turn", 2 + 2 * 4, 2, 0)])
def test_counts_per_policy(tiny_tokenizer, tmp_path, policy, rows, fitted, dropped):
    enc = _encoder(tiny_tokenizer, masking="all_assistant")
    short, long = _conversation(1), _conversation(4, words=12)
    limit = len(enc.encode(long).input_ids) * 2 // 3
    conversations = [Conversation(m, f"f:{i}") for i, m in enumerate([short, long, short,
                                                                       long])]
    log = BadRecordLog()
    data = tokenize_conversations(conversations, enc, max_length=limit,
                                  overflow=REGISTRY.get("overflow_policy", policy),
                                  on_bad_record="skip", log=log, cache_dir=str(tmp_path))
    assert len(data) == rows and log.counts.get("too_long", 0) == dropped
    assert sum(1 for r in data["overflow_rows"] if r) == fitted
    assert set(data["origin"]) == ({"f:0", "f:2"} if policy == "drop" else
                                   {"f:0", "f:1", "f:2", "f:3"})


def test_the_run_summary_counts_what_the_policy_did(tiny_recipe, tmp_path):
    import json

    from tempering.data.datamodule import ConversationDataModule
    from tempering.models import load_fast_tokenizer
    from tempering.recipe import load_recipe
    from tests.conftest import write_jsonl

    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": _conversation(1)},
                                                  {"messages": _conversation(8, words=10)},
                                                  {"messages": _conversation(2, words=300)}])
    recipe = load_recipe({**tiny_recipe, "data": {**tiny_recipe["data"], "max_length": 200,
                                                  "train": [{"path": str(data)}],
                                                  "overflow": "split_per_turn",
                                                  "on_bad_record": "skip"},
                          "masking": "all_assistant"})
    pm = build_plugin_manager()
    dm = ConversationDataModule(recipe, load_fast_tokenizer(recipe.model), pm,
                                build_registry(pm))
    dm.setup("fit")
    overflow = dm.stats()["overflow"]
    assert overflow == {"policy": "split_per_turn", "fitted": 1, "examples": 8, "dropped": 1,
                        "turns_dropped": 0}
    assert dm.stats()["train_conversations"] == 1 + 8
    assert json.dumps(overflow)


def test_trained_turns_left_out_are_counted(tiny_tokenizer):
    enc = _encoder(tiny_tokenizer, masking="all_assistant")
    messages = _conversation(6)
    limit = len(enc.encode(messages).input_ids) * 3 // 5
    (row,) = _rows(enc, messages, limit, "drop_oldest_turns")
    kept = len(enc.encode(messages).spans) - row["turns_dropped"]
    assert 0 < row["turns_dropped"] < 6 and kept == len([
        t for t in range(6) if f"answer {t}" in tiny_tokenizer.decode(row["input_ids"])])
    long_first = [messages[0], {"role": "user", "content": "q " * 200},
                  {"role": "assistant", "content": "long " * 200}] + messages[1:5]
    rows = _rows(enc, long_first, limit, "split_per_turn")
    assert len(rows) == 2 and rows[0]["turns_dropped"] == 1  # the long turn fits nowhere


def test_real_conversations_through_every_builtin_template_and_policy(shared_data, tmp_path):
    """fastchat's 500 conversations and MT-Bench's questions with their reference answers: read,
    rendered by every built-in template, masked, fitted by every policy; nothing fails."""
    from transformers import AutoTokenizer

    from tempering.data.sources import load_conversations
    from tempering.recipe import DataSource
    from tests.conftest import TINY

    tok = AutoTokenizer.from_pretrained(TINY)
    pm = build_plugin_manager(entry_points=False)
    log = BadRecordLog()
    fastchat = load_conversations(
        [DataSource(path=str(shared_data / "fastchat_dummy_conversation.json"),
                    format="sharegpt")], pm.hook.format_example, REGISTRY,
        on_bad_record="error", seed=0, log=log)
    bench = load_conversations(
        [DataSource(path=str(shared_data / "mt_bench_question.jsonl"), format="mt_bench")],
        pm.hook.format_example, REGISTRY, on_bad_record="skip", seed=0, log=log)
    # 41 questions have no reference answers, 8 an empty one for a turn: counted, not read.
    assert len(fastchat) == 500 and len(bench) == 31
    assert log.counts == {"no_assistant": 41, "empty_assistant": 8}
    assert [m["role"] for m in bench[0].messages] == ["user", "assistant"] * 2
    conversations = fastchat[::5] + bench
    for template in REGISTRY.names("chat_template"):
        for masking in ("last_assistant", "all_assistant"):
            encoder = ConversationEncoder(tok, chat_template=template, masking=masking,
                                          registry=REGISTRY)
            for policy in ("drop_oldest_turns", "split_per_turn", "truncate_turns"):
                seen = BadRecordLog()
                data = tokenize_conversations(
                    conversations, encoder, max_length=160,
                    overflow=REGISTRY.get("overflow_policy", policy), on_bad_record="error",
                    log=seen, cache_dir=str(tmp_path))
                assert set(seen.counts) <= {"too_long"}, (template, policy, seen.counts)
                assert len(data) > 0 and max(data["length"]) <= 160
                assert any(data["overflow_rows"]), (template, policy)
