"""Data sources: files, directories and datasets; field mapping; weights; the token cache."""

from __future__ import annotations

import json

import pytest

from tempering.chat.encoding import ConversationEncoder
from tempering.data.sources import BadRecordLog, load_conversations
from tempering.data.tokenization import tokenize_conversations
from tempering.plugin_manager import build_plugin_manager
from tempering.recipe import DataSource
from tests.conftest import REGISTRY, write_jsonl


def _load(sources, **kw):
    pm = build_plugin_manager(entry_points=False)
    log = BadRecordLog()
    convs = load_conversations(sources, pm.hook.format_example, REGISTRY, on_bad_record="error",
                               seed=0, log=log, **kw)
    return convs, log


def test_field_mapping_and_alpaca_input(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q", "context": "C", "answer": "A"}])
    convs, _ = _load([DataSource(path=str(path), format="alpaca",
                                 fields={"instruction": "question", "input": "context",
                                         "output": "answer"})])
    assert convs[0].messages == [{"role": "user", "content": "Q\n\nC"},
                                 {"role": "assistant", "content": "A"}]
    assert convs[0].origin.endswith("qa.jsonl:1")


def test_source_weights_repeat_and_subsample(tmp_path):
    recs = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "pc.jsonl", recs)
    twice, _ = _load([DataSource(path=str(path), weight=2.0)])
    half, _ = _load([DataSource(path=str(path), weight=0.5)])
    assert len(twice) == 20 and len(half) == 5
    assert len({c.messages[0]["content"] for c in half}) == 5
    assert [c.messages for c in half] == [c.messages for c in _load(
        [DataSource(path=str(path), weight=0.5)])[0]]  # seeded


def test_reference_data_files(shared_data):
    alpaca, _ = _load([DataSource(path=str(shared_data / "alpaca_5000.json"), format="alpaca",
                                  max_records=200)])
    sharegpt, _ = _load([DataSource(path=str(shared_data / "fastchat_dummy_conversation.json"),
                                    format="sharegpt")])
    assert len(alpaca) == 200 and len(sharegpt) == 500
    assert max(len(c.messages) for c in sharegpt) >= 6
    assert {m["role"] for c in sharegpt for m in c.messages} == {"user", "assistant"}


def test_a_saved_datasets_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}] * 3).save_to_disk(
        str(tmp_path / "ds"))
    convs, _ = _load([DataSource(path=str(tmp_path / "ds"))])
    assert len(convs) == 3 and convs[0].origin == f"{tmp_path / 'ds'}[train]#0"


def test_an_unknown_format_without_a_plugin_is_a_clear_error(tmp_path):
    from tempering.plugin_manager import ComponentError
    from tempering.recipe import RecipeError, load_recipe, validate_components

    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "Q"}])
    with pytest.raises(ComponentError, match="unknown record_format 'qa'"):
        _load([DataSource(path=str(path), format="qa")])
    recipe = load_recipe({"data": {"train": [{"path": str(path)}, {"path": str(path),
                                                                   "format": "alpacca"}]}})
    with pytest.raises(RecipeError, match=r"^data\.train\[1\]\.format: unknown record_format "
                                          r"'alpacca'; did you mean 'alpaca'\?"):
        validate_components(recipe, REGISTRY)


def test_tokenization_is_cached_by_fingerprint(tmp_path, tiny_tokenizer, monkeypatch):
    from tempering.data import tokenization as tok_mod

    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "p", "completion": "c"}] * 4)
    convs, log = _load([DataSource(path=str(path))])
    encoder = ConversationEncoder(tiny_tokenizer, chat_template="chatml", registry=REGISTRY)
    kw = dict(max_length=64, overflow=REGISTRY.get("overflow_policy", "drop"), on_bad_record="error", log=log,
              cache_dir=str(tmp_path / "cache"))
    first = tokenize_conversations(convs, encoder, **kw)
    assert list((tmp_path / "cache" / "tempering").glob("*.arrow"))

    def fail(*a, **k):
        raise AssertionError("re-tokenized instead of reading the cache")

    monkeypatch.setattr(tok_mod, "encode_rows", fail)
    second = tokenize_conversations(convs, encoder, **kw)
    assert second["input_ids"] == first["input_ids"]
    with pytest.raises(AssertionError, match="re-tokenized"):  # other inputs: a new fingerprint
        tokenize_conversations(convs, encoder, **{**kw, "max_length": 65})


def test_bundled_assets_are_what_the_builder_produces(tmp_path):
    from tests.conftest import ROOT
    from tools.build_assets import build

    build(tmp_path)
    for rel in ("data/tasks_train.jsonl", "data/tasks_eval.jsonl", "tiny-llama/config.json",
                "tiny-llama/tokenizer.json"):
        assert (tmp_path / rel).read_bytes() == (ROOT / "framework" / "assets" / rel).read_bytes(), rel
    first = json.loads((tmp_path / "data/tasks_eval.jsonl").read_text().splitlines()[0])
    assert first["messages"][-1]["role"] == "assistant"


def test_two_tokenizing_processes_give_the_rows_one_gives(shared_data, tiny_tokenizer, tmp_path):
    convs, _ = _load([DataSource(path=str(shared_data / "fastchat_dummy_conversation.json"),
                                 format="sharegpt")])
    encoder = ConversationEncoder(tiny_tokenizer, chat_template="chatml", registry=REGISTRY)
    rows, logs = {}, {}
    for procs in (1, 2):
        logs[procs] = BadRecordLog()
        rows[procs] = tokenize_conversations(
            convs, encoder, max_length=256, overflow=REGISTRY.get("overflow_policy", "drop"),
            on_bad_record="skip", log=logs[procs], num_proc=procs,
            cache_dir=str(tmp_path / f"cache-{procs}")).to_dict()
    assert rows[2] == rows[1] and logs[2].counts == logs[1].counts
    assert logs[1].counts.get("too_long")  # some were over max_length: counted alike


def test_automatic_processes_start_one_per_two_thousand_conversations(monkeypatch):
    from tempering.data import tokenization

    monkeypatch.setattr(tokenization.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [tokenization.auto_num_proc(n) for n in (10, 3999, 4000, 100_000)] == [1, 1, 2, 2]
