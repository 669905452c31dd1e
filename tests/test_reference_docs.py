"""The generated reference (docs/recipe-reference.md, hooks.md, components.md and the recipe's
JSON Schema) matches the code, every recipe key and hook is documented, and every hook has a
test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tempering.hook_reference import hook_specs, markdown_components, markdown_hooks
from tempering.recipe import bundled_recipes
from tempering.recipe.reference import json_schema, markdown_reference, recipe_keys

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
REGENERATE = "regenerate with `tempering recipe-schema --write-docs docs`"


@pytest.mark.parametrize(("name", "make"), [
    ("recipe-reference.md", markdown_reference), ("hooks.md", markdown_hooks),
    ("components.md", markdown_components),
    ("recipe.schema.json", lambda: json.dumps(json_schema(), indent=2) + "\n")])
def test_the_committed_reference_is_what_the_code_generates(name, make):
    assert (DOCS / name).read_text(encoding="utf-8") == make(), f"docs/{name} is stale: " \
        + REGENERATE


def test_every_recipe_key_is_documented():
    undocumented = [k.path for k in recipe_keys() if not k.doc.strip()]
    assert not undocumented, f"recipe keys without documentation: {undocumented}"
    paths = {k.path for k in recipe_keys()}
    assert {"model.lora.r", "data.train[].format", "trainer", "stages",
            "teacher.name_or_path"} <= paths


def test_every_hook_is_documented_and_tested():
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("*.py")
                      if p.name != Path(__file__).name)
    for name, spec in hook_specs().items():
        assert (spec.__doc__ or "").strip(), f"hook {name} has no docstring"
        assert name in tests, f"hook {name} is not named by any test under tests/"


def test_the_json_schema_accepts_every_bundled_recipe_and_refuses_a_misspelt_key():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    example = REPO / "examples" / "tempering-example-plugin" / "tempering_example_plugin"
    recipes = [*bundled_recipes().values(), example / "example.yaml"]
    for path in recipes:
        errors = [f"{list(e.absolute_path)}: {e.message}"
                  for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, (path.name, errors[:3])
    typo = {"data": {"train": [{"path": "x.jsonl", "fromat": "alpaca"}]}}
    assert [list(e.absolute_path) for e in validator.iter_errors(typo)] == [["data", "train", 0]]
    wrong = {"optim": {"lr": "fast"}, "masking": {"options": {}}}
    assert len(list(validator.iter_errors(wrong))) == 2  # a string lr; a component without name


def test_recipe_schema_prints_the_reference_and_the_json_schema(capsys):
    from tempering.cli import main

    assert main(["recipe-schema"]) == 0
    assert capsys.readouterr().out == markdown_reference()
    assert main(["recipe-schema", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
