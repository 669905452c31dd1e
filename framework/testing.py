"""tempering's pytest kit for plugin authors, loaded by pytest on its own (entry point ``pytest11``)
wherever tempering is installed.

Tell the kit which plugin you test by overriding one fixture in your ``conftest.py``::

    import pytest

    @pytest.fixture
    def tempering_plugins():
        return ["my_tempering_plugin"]      # module names (or the imported modules)

then, in your tests::

    def test_my_template_trains_exactly_the_answers(tempering_check_masks):
        tempering_check_masks("my_template")

    def test_my_objective_trains(tempering_run, tempering_recipe):
        summary = tempering_run({**tempering_recipe, "objective": "my_objective"}, steps=3)
        assert summary["global_step"] == 3

Fixtures:

- ``tempering_plugins``: the plugins under test (``[]`` unless overridden).
- ``tempering_pm`` / ``tempering_registry``: a fresh plugin manager with the built-ins and your
  plugins only (other installed plugins are left out, so the tests see the same components
  wherever they run), and the component registry built from it.
- ``tempering_tokenizer`` / ``tempering_model``: the bundled tiny Llama's tokenizer, and the model
  with seeded random weights (float32); both load offline in a second.
- ``tempering_recipe``: a recipe dict for a seconds-long CPU run on the bundled tiny model and
  task data (ChatML, W&B off), to change a key or two of.
- ``tempering_run``: ``tempering_run(recipe, *overrides, steps=3)`` runs a recipe (a dict, a file or
  a bundled name) with your plugins, for ``steps`` optimizer steps in a temporary directory, on
  the CPU with W&B off, and returns its summary (``summary.json``: losses, metrics, counts).
- ``tempering_check_masks``: ``tempering_check_masks(chat_template, conversations=None,
  masking="all_assistant", tokenizer=None, **encoder_options)`` encodes conversations (default:
  single- and multi-turn samples) through a chat template and fails the test, naming every
  problem, unless the token ids are what ``tokenizer.apply_chat_template`` gives and exactly the
  assistant turns are trained; returns the encodings.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

__all__ = ["tempering_plugins", "tempering_pm", "tempering_registry", "tempering_tokenizer",
           "tempering_model", "tempering_recipe", "tempering_run", "tempering_check_masks"]


def _module_name(plugin: Any) -> str:
    name = plugin if isinstance(plugin, str) else getattr(plugin, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"tempering_plugins: {plugin!r} is neither a module nor a module name; "
                        "a recipe lists plugins by module name")
    return name


@pytest.fixture
def tempering_plugins() -> list[Any]:
    """The plugins under test: override this fixture to return your plugin modules (or names)."""
    return []


@pytest.fixture
def tempering_pm(tempering_plugins: list[Any]) -> Any:
    """A fresh plugin manager: the built-ins and ``tempering_plugins``, no other installed one."""
    from tempering.plugin_manager import build_plugin_manager

    return build_plugin_manager([_module_name(p) for p in tempering_plugins], entry_points=False)


@pytest.fixture
def tempering_registry(tempering_pm: Any) -> Any:
    """The component registry of ``tempering_pm``."""
    from tempering.plugin_manager import build_registry

    return build_registry(tempering_pm)


@pytest.fixture(scope="session")
def tempering_tokenizer() -> Any:
    """The bundled tiny Llama's fast tokenizer."""
    from tempering.models import load_fast_tokenizer
    from tempering.recipe import ModelConfig

    return load_fast_tokenizer(ModelConfig())


@pytest.fixture
def tempering_model() -> Any:
    """The bundled tiny Llama with seeded random weights (float32), in eval mode."""
    from tempering.models import load_causal_lm
    from tempering.recipe import ModelConfig

    config = ModelConfig(name_or_path="bundled:tiny-llama", init="random", dtype="float32")
    return load_causal_lm(config, seed=0).eval()


@pytest.fixture
def tempering_recipe(tmp_path: Path) -> dict[str, Any]:
    """A recipe dict for a seconds-long CPU run on the bundled tiny model and task data."""
    return {
        "name": "plugin-test",
        "model": {"name_or_path": "bundled:tiny-llama", "init": "random", "dtype": "float32"},
        "chat_template": "chatml",
        "data": {"train": [{"path": "bundled:data/tasks_train.jsonl", "format": "messages",
                            "max_records": 64}],
                 "validation": [{"path": "bundled:data/tasks_eval.jsonl", "format": "messages",
                                 "max_records": 8}],
                 "max_length": 256, "batch_size": 2, "num_proc": 1,
                 "cache_dir": str(tmp_path / "tempering-cache")},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "eval": {"generate_samples": 0, "before_training": False},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "wandb": {"mode": "disabled"},
    }


@pytest.fixture
def tempering_run(tmp_path: Path, tempering_plugins: list[Any]) -> Any:
    """``tempering_run(recipe, *overrides, steps=3) -> summary``; see the module docstring."""
    from tempering.pipeline.run import run_pipeline
    from tempering.recipe import load_recipe

    counter = itertools.count(1)
    names = [_module_name(p) for p in tempering_plugins]

    def run(recipe: Any, *overrides: str, steps: int = 3) -> dict[str, Any]:
        out = tmp_path / f"tempering-run-{next(counter)}"
        ours = [f"trainer.max_steps={steps}", f"train.output_dir={out}", "wandb.mode=disabled",
                "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
                "trainer.enable_progress_bar=false", "train.checkpoint_every_n_steps=null"]
        loaded = load_recipe(recipe, [*ours, *overrides])
        loaded.plugins = [*loaded.plugins, *(n for n in names if n not in loaded.plugins)]
        return run_pipeline(loaded)

    return run


@pytest.fixture
def tempering_check_masks(tempering_tokenizer: Any, tempering_registry: Any) -> Any:
    """``tempering_check_masks(chat_template, ...)``; see the module docstring."""
    from tempering.chat.check import SAMPLE_CONVERSATIONS, sample_problems
    from tempering.chat.encoding import ConversationEncoder

    def check(chat_template: Any, conversations: list[list[dict[str, Any]]] | None = None,
              masking: Any = "all_assistant", tokenizer: Any = None,
              **encoder_options: Any) -> list[Any]:
        tok = tokenizer if tokenizer is not None else tempering_tokenizer
        encoder = ConversationEncoder(tok, chat_template=chat_template, masking=masking,
                                      registry=tempering_registry, **encoder_options)
        problems, encoded = [], []
        for n, messages in enumerate(conversations or SAMPLE_CONVERSATIONS):
            try:
                enc = encoder.encode(messages)
            except Exception as exc:  # a template whose spans cannot be located
                problems.append(f"conversation {n}: {type(exc).__name__}: {exc}")
                continue
            encoded.append(enc)
            problems += [f"conversation {n}: {p}" for p in
                         sample_problems(encoder, tok, messages, enc)]
        if problems:
            pytest.fail(f"chat template {encoder.template.name!r}: masks are not exact:\n  "
                        + "\n  ".join(problems), pytrace=False)
        return encoded

    return check
