"""The example plugin's own tests, written with tempering's pytest kit."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tempering_example_plugin as plugin
import torch

RECIPE = Path(plugin.__file__).with_name("example.yaml")
KINDS = {"chat_template": "example_alpaca", "masking": "example_last_two",
         "objective": "example_focal", "generator": "example_echo", "scorer": "example_length",
         "sample_filter": "example_min_words", "task_formatter": "example_reverse",
         "task": "example_reverse_words"}


def test_every_component_is_registered(tempering_registry):
    for kind, name in KINDS.items():
        assert tempering_registry.get(kind, name).name == name


def test_the_installed_package_is_found_through_its_entry_point():
    from tempering.plugin_manager import build_plugin_manager, build_registry

    registry = build_registry(build_plugin_manager())  # entry points only, nothing listed
    assert registry.providers["chat_template"]["example_alpaca"] == "example"


def test_the_chat_template_trains_exactly_the_answers(tempering_check_masks):
    tempering_check_masks("example_alpaca")
    last_two = tempering_check_masks("example_alpaca", masking="example_last_two")
    assert [index for index, _, _ in last_two[2].spans] == [3, 5]  # of three answers


def test_focal_loss_is_cross_entropy_at_gamma_0_and_weighs_confident_tokens_less():
    logits, labels = torch.randn(6, 11), torch.randint(0, 11, (6,))
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(plugin.focal(logits, labels, gamma=0.0), ce)
    p = torch.exp(-ce)
    torch.testing.assert_close(plugin.focal(logits, labels, gamma=2.0), (1 - p) ** 2 * ce)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        plugin.focal(logits, labels, gamma=-1.0)


def test_the_task_formatter_answers_with_the_reversed_word():
    record = plugin.random_word(random.Random(0))
    for phrasing in range(2):
        instruction, answer = plugin.reverse_format(record, phrasing)
        assert record["word"] in instruction and answer == record["word"][::-1]


def test_the_recipe_runs_every_component(tempering_run, tmp_path):
    summary = tempering_run(str(RECIPE), f"data.cache_dir={tmp_path / 'cache'}",
                            "data.mixture.examples=200", steps=3)
    stages = {s["kind"]: s for s in summary["stages"]}
    assert stages["train"]["global_step"] == 3
    assert stages["generate"]["num_samples"] == 50 * 4
    filtered = Path(stages["filter"]["output_dir"])
    report = json.loads((filtered / "summary.json").read_text())
    assert report["candidates"] == 200 and report["kept"] + report["dropped_by"][
        "example_min_words"] == 200
    samples = [json.loads(line) for line in
               (filtered / "samples.jsonl").read_text().splitlines()]
    kept = [s for s in samples if s["kept"]]
    assert len(samples) == 200 and len(kept) == report["kept"] > 0
    for sample in samples:
        words = len(sample["text"].split())
        assert sample["generator"] == "example_echo"
        assert sample["scores"]["example_length"] == min(1.0, words / 6)
        if not sample["kept"]:
            assert sample["filtered_by"] == "example_min_words" and words < 3
            assert sample["filter_reason"] == "fewer than 3 words"
        else:
            assert words >= 3
