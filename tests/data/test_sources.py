"""Reading data files: no record lost or misattributed (issue 6, items 1-4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tempering.data.sources import BadRecordLog, Conversation, DataError, load_conversations
from tempering.plugins.record_formats import format_example
from tempering.recipe import DataSource
from tests.conftest import REGISTRY


def _record(answer: str) -> dict:
    return {"messages": [{"role": "user", "content": "Say it."},
                         {"role": "assistant", "content": answer}]}


def _read(path: Path, on_bad_record: str = "error") -> tuple[list[Conversation], BadRecordLog]:
    log = BadRecordLog()
    conversations = load_conversations([DataSource(path=str(path))],
                                       format_example, REGISTRY,
                                       on_bad_record=on_bad_record, seed=0, log=log)
    return conversations, log


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_line_separators_inside_json_strings_are_text(tmp_path, separator: str) -> None:
    answers = ["one", f"two{separator}lines", "three"]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(_record(a), ensure_ascii=False) + "\n" for a in answers)
                    + '{"messages": [\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:4: invalid JSON"):
        _read(path)
    conversations, log = _read(path, "skip")
    assert [c.messages[1]["content"] for c in conversations] == answers
    assert [c.origin.rsplit(":", 1)[1] for c in conversations] == ["1", "2", "3"]
    assert dict(log.counts) == {"malformed_json": 1}


def test_crlf_lines_are_read(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join(json.dumps(_record(a)).encode() + b"\r\n" for a in ("x", "y")))
    assert [c.messages[1]["content"] for c in _read(path)[0]] == ["x", "y"]


def test_a_line_that_is_not_utf8_is_one_named_bad_record(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps(_record("fine")).encode()
    path.write_bytes(good + b"\n" + good[:-3] + b"\xff\xfe" + good[-3:] + b"\n" + good + b"\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid UTF-8"):
        _read(path)
    conversations, log = _read(path, "skip")
    assert [c.origin.rsplit(":", 1)[1] for c in conversations] == ["1", "3"]
    assert dict(log.counts) == {"bad_encoding": 1}


def test_a_byte_order_mark_keeps_the_first_record(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_record("first")).encode() + b"\n")
    assert [c.messages[1]["content"] for c in _read(path)[0]] == ["first"]
    array = tmp_path / "d.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps([_record("a"), _record("b")]).encode())
    conversations = _read(array)[0]
    assert [c.origin for c in conversations] == [f"{array} record 1", f"{array} record 2"]


def test_errors_name_the_file_read_even_from_the_cache(tiny_tokenizer, tmp_path) -> None:
    from tempering.chat.encoding import ConversationEncoder
    from tempering.data.tokenization import tokenize_conversations

    # record 2 trains nothing (masking per_message, train: false) and is an error
    records = [_record("ok"), {"messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a", "train": False}]}]
    a = tmp_path / "A.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in records))
    b = tmp_path / "B.jsonl"
    shutil.copy(a, b)
    encoder = ConversationEncoder(tiny_tokenizer, chat_template="chatml", masking="per_message", registry=REGISTRY)
    for path in (a, b):  # the second tokenization is read from the cache the first wrote
        conversations = _read(path)[0]
        with pytest.raises(DataError, match=rf"^{path}:2: "):
            tokenize_conversations(conversations, encoder, max_length=64, overflow=REGISTRY.get("overflow_policy", "drop"),
                                   on_bad_record="error", log=BadRecordLog(),
                                   cache_dir=str(tmp_path / "cache"))
    data = tokenize_conversations(_read(b)[0][:1], encoder, max_length=64, overflow=REGISTRY.get("overflow_policy", "drop"),
                                  on_bad_record="error", log=BadRecordLog(),
                                  cache_dir=str(tmp_path / "cache"))
    assert data["origin"] == [f"{b}:1"]


def test_skip_mode_says_what_it_skipped_when_reading_ends(tiny_recipe, tmp_path, capsys) -> None:
    from tempering.data.datamodule import ConversationDataModule
    from tempering.models import load_fast_tokenizer as load_tokenizer
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.recipe import load_recipe

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": [\n\xff\n')
    tiny_recipe["data"]["train"].append({"path": str(bad)})
    tiny_recipe["data"]["on_bad_record"] = "skip"
    recipe = load_recipe(tiny_recipe)
    pm = build_plugin_manager()
    dm = ConversationDataModule(recipe, load_tokenizer(recipe.model), pm, build_registry(pm))
    dm.setup("fit")
    err = capsys.readouterr().err
    assert "skipped 2 records (" in err and "malformed_json 1" in err and "bad_encoding 1" in err
    assert dm.stats()["skipped_records"] == {"malformed_json": 1, "bad_encoding": 1}


# -- item 6 and 8: a run's exit status and outputs tell the truth ------------------------------


@pytest.mark.slow
def test_a_run_with_no_usable_data_fails_with_the_reasons(tiny_recipe, tmp_path) -> None:
    import os
    import subprocess
    import sys

    tiny_recipe["data"]["max_length"] = 8  # every conversation is longer
    tiny_recipe["eval"]["before_training"] = True
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(tiny_recipe))
    proc = subprocess.run([sys.executable, "-m", "tempering.cli", "run", str(path)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith("tempering: error: no training conversation is usable: 64 records")
    assert "too_long: 64 (longer than data.max_length 8)" in last
    assert not (tmp_path / "run" / "final").exists()


def test_checkpoint_settings_are_honoured_and_named_plainly(tiny_recipe, tmp_path) -> None:
    from tempering.recipe import load_recipe
    from tempering.train.driver import run_recipe

    tiny_recipe["trainer"].update(max_steps=4, enable_checkpointing=False)
    run_recipe(load_recipe(tiny_recipe))
    assert not (tmp_path / "run" / "checkpoints").exists()
    tiny_recipe["trainer"].pop("enable_checkpointing")
    tiny_recipe["train"].update(checkpoint_every_n_steps=2, output_dir=str(tmp_path / "run2"))
    run_recipe(load_recipe(tiny_recipe))
    names = sorted(p.name for p in (tmp_path / "run2" / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step-2.ckpt", "step-4.ckpt"]


def test_summary_json_names_the_wandb_run(tiny_recipe, tmp_path) -> None:
    from tempering.recipe import load_recipe
    from tempering.train.driver import run_recipe

    tiny_recipe["wandb"] = {"mode": "offline"}
    tiny_recipe["trainer"]["max_steps"] = 1
    summary = run_recipe(load_recipe(tiny_recipe))
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["wandb_dir"] == summary["wandb_dir"] and Path(written["wandb_dir"]).is_dir()


# -- item 7: a signal is a checkpoint, a summary marked interrupted and a non-zero exit --------


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_and_fails_the_run(tiny_recipe, tmp_path, signame) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    tiny_recipe["trainer"]["max_steps"] = 100000  # far more than the test waits for
    tiny_recipe["train"]["checkpoint_every_n_steps"] = 2
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(tiny_recipe))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "tempering.cli", "run", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert last.exists(), "training never started"
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + getattr(signal, signame), err[-3000:]
    assert f"tempering: interrupted by {signame} at step" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["interrupted"] == signame and summary["final_model"] is None
    assert torch.load(last, weights_only=False)["global_step"] == summary["global_step"] > 0
    assert not (tmp_path / "run" / "final").exists()


# -- item 5: a run directory holds one run -----------------------------------------------------


def _cli(path: Path, *overrides: str):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tempering.cli", "run", str(path), *overrides],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})


@pytest.mark.slow
def test_a_reused_run_directory_is_refused_started_over_or_resumed(tiny_recipe, tmp_path) -> None:
    tiny_recipe["trainer"]["max_steps"] = 6
    tiny_recipe["wandb"] = {"mode": "offline"}
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(tiny_recipe))
    run = tmp_path / "run"
    first = _cli(path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (run / "wandb_run_id").read_text().strip()

    again = _cli(path, "trainer.max_steps=4")
    assert again.returncode == 2
    line = again.stderr.strip().splitlines()[-1]
    assert "already holds a run" in line and "train.resume_from=last" in line
    assert "train.overwrite=true" in line
    assert json.loads((run / "summary.json").read_text())["global_step"] == 6  # untouched

    resumed = _cli(path, "trainer.max_steps=8", "train.resume_from=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 8
    assert summary["wandb_dir"].endswith(run_id)  # the same W&B run continues

    over = _cli(path, "trainer.max_steps=4", "train.overwrite=true")
    assert over.returncode == 0, over.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 4
    assert (run / "wandb_run_id").read_text().strip() != run_id
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # the old run is gone


def test_conversations_without_an_answer_are_prompts_not_training_data(tmp_path) -> None:
    """A conversation with no assistant message is a bad record of training data
    (``no_assistant``, named), and a prompt when prompts are read (MT-Bench's questions)."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        {"messages": [{"role": "user", "content": "Q1"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "system", "value": "S"}]},
        {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A"}]},
    )) + "\n")
    source = DataSource(path=str(path))
    with pytest.raises(DataError, match=r"prompts\.jsonl:1: the conversation has no assistant"):
        load_conversations([source], format_example, REGISTRY, on_bad_record="error", seed=0,
                           log=BadRecordLog())
    log = BadRecordLog()
    train = load_conversations([source], format_example, REGISTRY, on_bad_record="skip", seed=0,
                               log=log)
    assert [c.origin for c in train] == [f"{path}:3"] and log.counts == {"no_assistant": 2}
    prompts = load_conversations([source], format_example, REGISTRY, on_bad_record="error",
                                 seed=0, log=BadRecordLog(), require_assistant=False)
    assert [[m["role"] for m in c.messages] for c in prompts] == [
        ["user"], ["user", "system"], ["user", "assistant"]]
