"""The parsers of a generator's instructions and instances, on malformed output."""

from __future__ import annotations

import pytest

from tempering.data.sources import DataError
from tempering.pipeline.evolve import strip_heading
from tempering.pipeline.growth import parse_instances, parse_instructions, read_tasks
from tempering.recipe import DataSource


def test_instructions_in_every_numbering_with_continuations_and_a_preamble():
    text = ("Sure! Here are more tasks:\n"
            "9. Name three rivers in Asia.\n"
            "10) Task: Translate the sentence\ninto French.\n"
            "Task 11: Write a haiku.\n"
            "**12.** Instruction: Sort the list.\n"
            "  13 - Count the vowels.\n")
    parsed = parse_instructions(text, truncated=False)
    assert parsed.items == ["Name three rivers in Asia.", "Translate the sentence\ninto French.",
                            "Write a haiku.", "Sort the list.", "Count the vowels."]
    assert parsed.rejects == []


def test_a_truncated_answer_loses_its_last_item_as_a_reject():
    parsed = parse_instructions("1. Write a limerick.\n2. Explain why the", truncated=True)
    assert parsed.items == ["Write a limerick."]
    assert parsed.rejects == [{"text": "Explain why the", "reason": "cut off by max_new_tokens"}]


def test_no_numbered_item_and_empty_items_are_rejects():
    parsed = parse_instructions("I would rather not.", truncated=False)
    assert parsed.items == [] and parsed.rejects[0]["reason"] == "no numbered instruction"
    parsed = parse_instructions("1.\n2. Name a bird.", truncated=False)
    assert parsed.items == ["Name a bird."] and parsed.rejects == [
        {"text": "", "reason": "an empty item"}]
    assert parse_instructions("", truncated=True).rejects[0]["reason"] == \
        "no numbered instruction"


def test_instances_input_first_with_missing_fields_and_multiline_outputs():
    text = ("Example 1\nInput: <none>\nOutput: Paris.\n"
            "Example 2\nInput: 2, 1\nOutput: 1, 2\nand done\n"
            "Example 3\nInput: lonely input\n"
            "Input: restarted\nOutput: ok\n")
    parsed = parse_instances(text, truncated=False)
    assert parsed.items == [("", "Paris."), ("2, 1", "1, 2\nand done"), ("restarted", "ok")]
    assert [r["reason"] for r in parsed.rejects] == ["no output"]


def test_instances_label_first_and_truncation():
    text = ("Example 1\nClass label: spam\nInput: Win a prize now\n"
            "Example 2\nClass label: ham\n"
            "Example 3\nLabel: spam\nInput: Cheap pills, cli")
    parsed = parse_instances(text, truncated=True, label_first=True)
    assert parsed.items == [("Win a prize now", "spam")]
    assert [r["reason"] for r in parsed.rejects] == ["cut off by max_new_tokens",
                                                     "no input for the label"]
    assert parse_instances("just prose", False).rejects[0]["reason"] == "no Input/Output lines"


def test_the_answer_heading_is_taken_off_an_evolved_instruction():
    prompt = "Rewrite it.\n\n#New Instruction#:\n"
    assert strip_heading("#New Instruction#: Name five rivers.", prompt) == "Name five rivers."
    assert strip_heading("Name five rivers.", prompt) == "Name five rivers."


def test_seed_tasks_in_the_175_task_format_are_read_as_is(shared_data):
    tasks = read_tasks([DataSource(path=str(shared_data / "alpaca_seed_tasks.jsonl"))], "seeds")
    assert len(tasks) == 175
    assert sum(t.is_classification for t in tasks) > 10
    assert all(t.instances and t.instruction for t in tasks)
    assert tasks[1].instances[0] == ("Night : Day :: Right : Left",
                                     "The relation between the given pairs is that they are "
                                     "opposites.")


def test_a_bad_seed_names_its_file_line_and_field(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"instruction": "Name a color."}\n{"instruction": "", "instances": []}\n'
                   '{"instruction": "x y", "instances": [{"input": 3}]}\n')
    with pytest.raises(DataError, match=r"seeds\[0\]: .*seeds.jsonl:2, field instruction"):
        read_tasks([DataSource(path=str(bad))], "seeds")
    tasks = read_tasks([DataSource(path=str(bad))], "seeds", on_bad_record="skip")
    assert [t.instruction for t in tasks] == ["Name a color."]
    bad.write_text('{"instruction": "x y", "instances": [{"input": 3}]}\n')
    with pytest.raises(DataError, match=r"seeds.jsonl:1, field instances\[0\]"):
        read_tasks([DataSource(path=str(bad))], "seeds")


def test_bundled_growth_assets_are_what_the_builder_produces_and_parse(tmp_path):
    import json

    from tests.conftest import ROOT
    from tools.build_growth_assets import build

    build(tmp_path)
    for rel in ("data/seed_tasks.jsonl", "data/growth_warmup.jsonl"):
        assert (tmp_path / rel).read_bytes() == (ROOT / "framework" / "assets" / rel
                                                 ).read_bytes(), rel
    seeds = read_tasks([DataSource(path="bundled:data/seed_tasks.jsonl")], "seeds")
    assert len(seeds) == 20 and sum(t.is_classification for t in seeds) == 3
    # The demonstrations are in the formats the stages' parsers read.
    lists = instances = 0
    for line in (tmp_path / "data" / "growth_warmup.jsonl").read_text().splitlines():
        user, answer = (m["content"] for m in json.loads(line)["messages"])
        if user.startswith("Write 8 new tasks"):
            parsed = parse_instructions(answer, truncated=False)
            assert len(parsed.items) == 8 and not parsed.rejects
            lists += 1
        elif "Example N" in user:
            parsed = parse_instances(answer, False, label_first="Class label:" in user)
            assert len(parsed.items) == 3 and not parsed.rejects, answer
            instances += 1
    assert lists == 700 and instances == 700
