"""Every mistake gets one clear line, before any data is read (issue 6, items 9 and 10)."""

from __future__ import annotations

import io
import json

import pytest

from tempering.cli import main
from tempering.recipe import RecipeError, load_recipe


@pytest.mark.parametrize(("override", "expected"), [
    ("trainer.max_steps='30'", "trainer.max_steps: '30' is not one of: int"),
    ("trainer.precision=bf17", "trainer.precision: 'bf17' is not one of"),
    ("data.batch_size=0", "data.batch_size: 0 is below the smallest allowed value 1"),
    ("data.batch_size=-1", "data.batch_size: -1 is below the smallest allowed value 1"),
    ("data.max_length=0", "data.max_length: 0 is below the smallest allowed value 1"),
    ("optim.lr=[1", "override 'optim.lr=[1': the value is not valid YAML"),
    ("optim.lr=!!python/object/apply:os.system [ls]", "the value is not valid YAML"),
    ("data.train.5.path=x", "data.train is a list of 1; '5' is not one of its indices 0..0"),
    ("name.sub=3", "override name.sub: name is 'sft-quickstart', not a mapping or a list"),
    ("data.train.0.path=/no/such/file.jsonl", "data.train[0].path: /no/such/file.jsonl does not"),
    ("data.train.0.path=", "data.train[0].path: expected str, got None"),
    ("model.tokenizer=/no/such/tokenizer", "model.tokenizer: /no/such/tokenizer does not exist"),
    ("model.name_or_path=bundled:nothing", "model.name_or_path: 'bundled:nothing': no such"),
])
def test_a_bad_value_is_one_line_with_its_key_path(override: str, expected: str) -> None:
    from tempering.recipe import check_locations

    with pytest.raises(RecipeError) as err:
        check_locations(load_recipe("sft-quickstart", [override]))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["data.batch_size=0", "data.train.0.path=/no/such.jsonl"])
def test_the_cli_says_it_in_one_line_before_reading_data(capsys, tmp_path, override) -> None:
    assert main(["run", "sft-quickstart", override, f"train.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Tokenizing" not in err


def test_an_unreachable_hub_model_is_one_line(tiny_recipe, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_recipe["model"] = {"name_or_path": "nobody/no-such-model-xyz", "init": "pretrained"}
    path = tiny_recipe["train"]["output_dir"] + ".yaml"
    with open(path, "w") as f:
        json.dump(tiny_recipe, f)
    assert main(["run", path]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tempering: error: model.name_or_path: cannot load "
                           "'nobody/no-such-model-xyz'")


def test_check_template_on_a_missing_tokenizer_is_one_line(capsys) -> None:
    assert main(["check-template", "--tokenizer", "/no/such/tokenizer"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tempering: error: --tokenizer: /no/such/tokenizer does not exist")


def test_output_piped_into_a_closed_reader_stops_quietly(monkeypatch, capsys) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            return saved

    import os

    saved = os.dup(1)  # the test's own stdout survives the dup2 onto /dev/null
    try:
        monkeypatch.setattr("sys.stdout", ClosedPipe())
        assert main(["plugins"]) == 141
    finally:
        os.close(saved)
