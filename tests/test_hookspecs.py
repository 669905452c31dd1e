"""The plugin host: hooks, registration, discovery through recipes and entry points."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tempering import hookspecs
from tempering.plugin_manager import (
    BUILTIN_PLUGINS,
    ComponentError,
    build_plugin_manager,
    build_registry,
)
from tempering.recipe import ComponentConfig

HOOKS = sorted(n for n, f in vars(hookspecs).items()
               if inspect.isfunction(f) and hasattr(f, "tempering_spec"))


def test_every_hook_has_a_builtin_implementation_a_docstring_and_a_test():
    pm = build_plugin_manager(entry_points=False)
    source = Path(__file__).read_text()
    assert HOOKS, "no hookspecs found"
    for name in HOOKS:
        impls = getattr(pm.hook, name).get_hookimpls()
        assert any(i.plugin_name in BUILTIN_PLUGINS for i in impls), name
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name
        assert f"def test_{name}" in source, f"hook {name} has no test here"


def test_a_fresh_plugin_manager_per_run():
    a, b = build_plugin_manager(entry_points=False), build_plugin_manager(entry_points=False)
    extra = type(sys)("extra_plugin")
    b.register(extra)
    assert not a.is_registered(extra)


def test_nothing_is_registered_at_import():
    """Importing tempering and every built-in plugin creates no plugin manager and calls no hook."""
    import subprocess

    code = "\n".join([
        "import gc, importlib, pluggy, tempering",
        "from tempering.plugin_manager import BUILTIN_PLUGINS",
        "for name in BUILTIN_PLUGINS: importlib.import_module(name)",
        "print('MANAGERS', sum(isinstance(o, pluggy.PluginManager) for o in gc.get_objects()))"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MANAGERS 0" in out.stdout, out.stdout


def _module(name: str, code: str):
    mod = type(sys)(name)
    exec(textwrap.dedent(code), mod.__dict__)
    return mod


def test_register_chat_templates():
    mod = _module("tpl_plugin", """
        from tempering import ChatTemplate, hookimpl
        @hookimpl
        def register_chat_templates():
            return [ChatTemplate("plain", "{% for m in messages %}{{ m['content'] }}{% endfor %}")]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    assert registry.get("chat_template", "plain").jinja.startswith("{% for")
    assert registry.providers["chat_template"]["llama3"] == "tempering.plugins.chat_templates"


def test_registration_goes_through_pm_hook_so_wrappers_and_tracing_see_it():
    wrapper = _module("tpl_wrapper", """
        from tempering import hookimpl
        @hookimpl(wrapper=True)
        def register_chat_templates():
            lists = yield
            return [[t for t in found if t.name != "alpaca"] for found in lists]
    """)
    pm = build_plugin_manager([wrapper], entry_points=False)
    seen = []
    pm.add_hookcall_monitoring(lambda name, impls, kwargs: seen.append(name), lambda *a: None)
    registry = build_registry(pm)
    assert "alpaca" not in registry.names("chat_template")  # the wrapper filtered it
    assert registry.providers["chat_template"]["chatml"] == "tempering.plugins.chat_templates"
    from tempering.components import KINDS

    assert seen == [kind.hook for kind in KINDS]  # every kind's hook, traced


def test_a_registration_hook_that_returns_none_is_named():
    mod = _module("none_plugin", """
        from tempering import hookimpl
        @hookimpl
        def register_objectives():
            return None
    """)
    with pytest.raises(ComponentError, match="register_objectives: .*an empty list for none"):
        build_registry(build_plugin_manager([mod], entry_points=False))


def test_every_kind_of_the_table_has_its_generated_hook():
    from tempering.components import KINDS

    for kind in KINDS:
        spec = getattr(hookspecs, kind.hook)
        assert kind.hook in HOOKS and kind.contract.__name__ in spec.__doc__


def test_register_masking_strategies():
    mod = _module("mask_plugin", """
        from tempering import MaskingStrategy, hookimpl
        @hookimpl
        def register_masking_strategies():
            return [MaskingStrategy("first_assistant", lambda ms: [
                m["role"] == "assistant" and all(p["role"] != "assistant" for p in ms[:i])
                for i, m in enumerate(ms)])]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    select = registry.get("masking", "first_assistant").select
    msgs = [{"role": "user"}, {"role": "assistant"}, {"role": "user"}, {"role": "assistant"}]
    assert select(msgs) == [False, True, False, False]
    assert {"all_assistant", "last_assistant", "per_message", "all"} <= set(registry.names("masking"))


def test_register_record_formats(tmp_path):
    from tempering.data.sources import BadRecordLog, load_conversations
    from tempering.recipe import DataSource
    from tests.conftest import write_jsonl

    mod = _module("qa_format_plugin", """
        from tempering import RecordFormat, hookimpl
        def qa(record, answer_key="a"):
            return [{"role": "user", "content": record["q"]},
                    {"role": "assistant", "content": record[answer_key]}]
        @hookimpl
        def register_record_formats():
            return [RecordFormat("qa", qa, lambda r: "q" in r, "question/answer pairs")]
    """)
    pm = build_plugin_manager([mod], entry_points=False)
    registry = build_registry(pm)
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Q?", "a": "A.", "b": "B."}])
    for fmt, answer in (("qa", "A."), ("auto", "A."), ({"name": "qa", "answer_key": "b"}, "B.")):
        source = DataSource(path=str(path), format=fmt) if isinstance(fmt, str) else DataSource(
            path=str(path), format=ComponentConfig(fmt["name"], {"answer_key": "b"}))
        convs = load_conversations([source], pm.hook.format_example, registry,
                                   on_bad_record="error", seed=0, log=BadRecordLog())
        assert convs[0].messages[1] == {"role": "assistant", "content": answer}, fmt
    assert "qa" in registry.names("record_format")


def test_register_overflow_policies(tiny_tokenizer):
    from tempering.chat.encoding import ConversationEncoder
    from tempering.data.tokenization import encode_one

    mod = _module("keep_last_plugin", """
        from tempering import OverflowPolicy, hookimpl
        def last_turn(encoder, messages, encoded, max_length, keep=2):
            return encoder.encode(messages[-keep:])
        @hookimpl
        def register_overflow_policies():
            return [OverflowPolicy("last_turn", last_turn)]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    encoder = ConversationEncoder(tiny_tokenizer, chat_template="chatml", registry=registry)
    long = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]
    row = encode_one(encoder, long, 40, registry.get("overflow_policy", "last_turn"), {"keep": 2})
    assert row["error_kind"] == "" and row["input_ids"] == encoder.encode(long[-2:]).input_ids
    dropped = encode_one(encoder, long, 40, registry.get("overflow_policy", "drop"))
    assert dropped["error_kind"] == "too_long"


def test_register_metrics():
    from tempering.data.sources import Conversation
    from tempering.generate import GenerationParams
    from tempering.train.evaluation import evaluate_answers

    mod = _module("contains_plugin", """
        from tempering import Metric, hookimpl
        def contains(prediction, reference, ignore_case=False):
            if ignore_case:
                prediction, reference = prediction.lower(), reference.lower()
            return float(reference in prediction)
        @hookimpl
        def register_metrics():
            return [Metric("contains", contains)]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))

    from tempering.generate import Completion

    class Echo:  # a Generator that answers with the user's words
        def generate(self, prompts, params):
            return [[Completion(p[-1]["content"], 1, "stop")] for p in prompts]

    convs = [Conversation([{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                          "x") for u, a in (("The answer is 4", "4"), ("FIVE", "five"),
                                            ("six", "six"))]
    metrics = [(registry.get("metric", "contains"), {"ignore_case": True}),
               (registry.get("metric", "exact_match"), {})]
    got = evaluate_answers(Echo(), convs, metrics, params=GenerationParams(), limit=10)
    assert got["scores"] == {"contains": 1.0, "exact_match": 1 / 3} and got["samples"] == 3


def test_register_generators(tiny_recipe, monkeypatch):
    from tempering.recipe import RecipeError, load_recipe, validate_components
    from tempering.train.driver import run_recipe

    mod = _module("canned_backend", """
        from tempering import Completion, GeneratorBackend, hookimpl
        CALLS = []
        class Canned:
            def __init__(self, answer):
                self.answer = answer
            def generate(self, prompts, params):
                CALLS.append((len(prompts), params.max_new_tokens))
                return [[Completion(self.answer, 1, "stop")] * params.n for _ in prompts]
        def canned(context, answer="?"):
            assert context.model is not None and context.stop_ids
            return Canned(answer)
        @hookimpl
        def register_generators():
            return [GeneratorBackend("canned", canned)]
    """)
    monkeypatch.setitem(sys.modules, "canned_backend", mod)
    tiny_recipe.update(plugins=["canned_backend"])
    tiny_recipe["eval"].update(generate_samples=3, generator={"name": "canned", "answer": "no"})
    tiny_recipe["train"]["save_final"] = False
    summary = run_recipe(load_recipe(tiny_recipe))
    assert mod.CALLS == [(3, 64)] and summary["exact_match"] == 0.0
    assert [e["answer"] for e in summary["eval_examples"]] == ["no"] * 3
    registry = build_registry(build_plugin_manager(entry_points=False))
    assert {"transformers", "openai"} <= set(registry.names("generator"))
    with pytest.raises(RecipeError, match=r"^eval\.generator\.batch_sise: not an option of "
                                          r"generator 'transformers'; did you mean 'batch_size'"):
        validate_components(load_recipe({"data": {"train": [{"path": "x.jsonl"}]},
                                         "eval": {"generator": {"name": "transformers",
                                                                "batch_sise": 2}}}), registry)


def test_register_objectives():
    mod = _module("obj_plugin", """
        from tempering import Objective, hookimpl
        @hookimpl
        def register_objectives():
            return [Objective("zero", lambda s, l, t=None, **o: s.sum(-1) * 0)]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    assert registry.get("objective", "zero").per_token(torch.ones(2, 3), None).tolist() == [0, 0]


_FIRST_N = """
    from tempering import MaskingStrategy, hookimpl
    def first_n(messages, n=1):
        seen, out = 0, []
        for m in messages:
            out.append(m["role"] == "assistant" and seen < n)
            seen += m["role"] == "assistant"
        return out
    @hookimpl
    def register_masking_strategies():
        return [MaskingStrategy("first_n", first_n)]
"""


def test_every_kind_takes_name_and_options_in_a_recipe(tiny_tokenizer) -> None:
    from tempering.data.datamodule import recipe_encoder
    from tempering.recipe import load_recipe, validate_components

    registry = build_registry(build_plugin_manager([_module("first_n_plugin", _FIRST_N)],
                                                   entry_points=False))
    recipe = load_recipe({"data": {"train": [{"path": "x.jsonl"}]}, "masking": "first_n",
                          "chat_template": {"name": "chatml", "greeting": "hi"},
                          "objective": {"label_smoothing": 0.1}},
                         ["masking.n=2"])
    assert (recipe.masking.name, recipe.masking.options) == ("first_n", {"n": 2})
    assert (recipe.objective.name, recipe.objective.options) == ("cross_entropy",
                                                                 {"label_smoothing": 0.1})
    validate_components(recipe, registry)
    encoder = recipe_encoder(recipe, tiny_tokenizer, registry)
    assert encoder.template.kwargs["greeting"] == "hi"
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"},
             {"role": "user", "content": "q"}, {"role": "assistant", "content": "a2"},
             {"role": "user", "content": "q"}, {"role": "assistant", "content": "a3"}]
    enc = encoder.encode(turns)
    trained = tiny_tokenizer.decode([t for t, label in zip(enc.input_ids, enc.labels, strict=True)
                                     if label != -100])
    assert "a1" in trained and "a2" in trained and "a3" not in trained


@pytest.mark.parametrize(("given", "expected"), [
    ({"masking": {"name": "first_n", "nn": 2}}, "masking.nn: not an option of masking "
                                                 "'first_n'; did you mean 'n'?"),
    ({"masking": {"name": "first_n", "k": 2}}, "masking.k: not an option of masking 'first_n'"
                                                "; valid names: n"),
    ({"masking": {"name": "last_assistant", "n": 2}}, "masking.n: not an option of masking "
                                                       "'last_assistant'; it takes no options"),
    ({"objective": {"label_smoothin": 0.1}}, "objective.label_smoothin: not an option of "
                                              "objective 'cross_entropy'; did you mean "
                                              "'label_smoothing'?"),
])
def test_an_option_a_component_does_not_take_is_named(given, expected) -> None:
    from tempering.recipe import RecipeError, load_recipe, validate_components

    registry = build_registry(build_plugin_manager([_module("first_n_plugin2", _FIRST_N)],
                                                   entry_points=False))
    recipe = load_recipe({"data": {"train": [{"path": "x.jsonl"}]}, **given})
    with pytest.raises(RecipeError) as info:
        validate_components(recipe, registry)
    assert str(info.value).startswith(expected), str(info.value)


def test_duplicate_component_names_name_both_plugins():
    mod = _module("dup_plugin", """
        from tempering import ChatTemplate, hookimpl
        @hookimpl
        def register_chat_templates():
            return [ChatTemplate("llama3", "{{ messages }}")]
    """)
    with pytest.raises(ComponentError, match="tempering.plugins.chat_templates.*dup_plugin"):
        build_registry(build_plugin_manager([mod], entry_points=False))


def test_a_misspelt_hook_fails_loudly_with_a_suggestion():
    mod = _module("typo_plugin", """
        from tempering import hookimpl
        @hookimpl
        def register_chat_template():
            return []
    """)
    with pytest.raises(ComponentError, match="unknown hook 'register_chat_template'.*"
                       "register_chat_templates"):
        build_plugin_manager([mod], entry_points=False)


def test_wrong_component_type_is_reported():
    mod = _module("bad_plugin", """
        from tempering import hookimpl
        @hookimpl
        def register_objectives():
            return ["not an objective"]
    """)
    with pytest.raises(ComponentError, match="bad_plugin.*expected Objective"):
        build_registry(build_plugin_manager([mod], entry_points=False))


def test_format_example():
    from tempering.recipe import DataSource

    mod = _module("qa_plugin", """
        from tempering import hookimpl
        @hookimpl
        def format_example(record, source):
            if source.format.name != "qa":
                return None
            return [{"role": "user", "content": record["q"]},
                    {"role": "assistant", "content": record["a"]}]
    """)
    pm = build_plugin_manager([mod], entry_points=False)
    registry = build_registry(pm)
    got = pm.hook.format_example(record={"q": "Q?", "a": "A."}, source=DataSource(format="qa"),
                                 registry=registry)
    assert got == [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]
    builtin = pm.hook.format_example(record={"prompt": "p", "completion": "c"},
                                     source=DataSource(format="auto"), registry=registry)
    assert builtin[1] == {"role": "assistant", "content": "c"}


def test_compute_loss(tiny_tokenizer):
    """The built-in loss, and a plugin wrapping it to add a term."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tempering.chat.encoding import encode_conversation
    from tempering.data.packing import collate_padded
    from tempering.recipe import load_recipe
    from tempering.train.module import CausalLMModule
    from tests.conftest import REGISTRY, TINY

    mod = _module("loss_wrapper", """
        from tempering import hookimpl
        @hookimpl(wrapper=True)
        def compute_loss(context, batch):
            out = yield
            out.loss_sum = out.loss_sum + 100.0
            out.metrics["wrapped"] = 1.0
            return out
    """)
    recipe = load_recipe({"data": {"train": [{"path": "x.jsonl"}]}})
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY))
    enc = encode_conversation([{"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "yo"}], tiny_tokenizer,
                              chat_template="chatml", registry=REGISTRY)
    batch = collate_padded([{"input_ids": enc.input_ids, "labels": enc.labels}], 0)
    plain_pm = build_plugin_manager(entry_points=False)
    plain = CausalLMModule(recipe, plain_pm, build_registry(plain_pm), model=model)._loss(batch)
    assert plain.num_tokens == enc.num_supervised - (enc.labels[0] != -100)
    wrapped_pm = build_plugin_manager([mod], entry_points=False)
    wrapped = CausalLMModule(recipe, wrapped_pm, build_registry(wrapped_pm), model=model)._loss(batch)
    assert float(wrapped.loss_sum.detach()) == pytest.approx(float(plain.loss_sum.detach()) + 100.0)
    assert wrapped.metrics == {"wrapped": 1.0}


def test_load_model(tiny_tokenizer):
    """A plugin that loads models answers first; the built-in loader is the fallback."""
    from tempering.recipe import ModelConfig

    mod = _module("own_loader", """
        from tempering import hookimpl
        LOADED = []
        @hookimpl
        def load_model(role, config, seed):
            if role != "teacher":
                return None
            from tempering import load_causal_lm
            LOADED.append((role, seed))
            model = load_causal_lm(config, seed, key="teacher")
            model.loaded_by = "own_loader"
            return model
    """)
    pm = build_plugin_manager([mod], entry_points=False)
    cfg = ModelConfig(name_or_path="bundled:tiny-llama", init="random")
    teacher = pm.hook.load_model(role="teacher", config=cfg, seed=3)
    policy = pm.hook.load_model(role="policy", config=cfg, seed=3)
    assert teacher.loaded_by == "own_loader" and mod.LOADED == [("teacher", 3)]
    assert not hasattr(policy, "loaded_by") and policy.config.vocab_size == len(tiny_tokenizer)
    from tempering.recipe import RecipeError

    with pytest.raises(RecipeError, match="^teacher.name_or_path: "):
        pm.hook.load_model(role="teacher", config=ModelConfig(name_or_path="/nope"), seed=0)
    with pytest.raises(RecipeError, match="^generator.name_or_path: "):
        pm.hook.load_model(role="generator", config=ModelConfig(name_or_path="/nope"), seed=1)


def test_load_tokenizer():
    from tempering.recipe import ModelConfig

    mod = _module("tok_loader", """
        from tempering import hookimpl
        @hookimpl
        def load_tokenizer(config):
            from tempering import load_fast_tokenizer
            tok = load_fast_tokenizer(config)
            tok.model_max_length = 77
            return tok
    """)
    cfg = ModelConfig(name_or_path="bundled:tiny-llama")
    assert build_plugin_manager([mod], entry_points=False).hook.load_tokenizer(
        config=cfg).model_max_length == 77
    assert build_plugin_manager(entry_points=False).hook.load_tokenizer(
        config=cfg).is_fast


def test_trainer_callbacks(tiny_recipe, monkeypatch):
    from tempering.recipe import load_recipe
    from tempering.train.driver import run_recipe

    mod = _module("steps_seen_plugin", """
        import lightning.pytorch as pl
        from tempering import hookimpl
        SEEN = []
        class Steps(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                SEEN.append(trainer.global_step)
        @hookimpl
        def trainer_callbacks(recipe):
            return [Steps()]
    """)
    pm = build_plugin_manager(entry_points=False)
    names = [type(c).__name__ for group in pm.hook.trainer_callbacks(recipe=None) for c in group]
    assert names == ["PerfLogger"]  # the built-in one
    monkeypatch.setitem(sys.modules, "steps_seen_plugin", mod)
    tiny_recipe["plugins"] = ["steps_seen_plugin"]
    tiny_recipe["trainer"]["max_steps"] = 3
    tiny_recipe["train"]["save_final"] = False
    summary = run_recipe(load_recipe(tiny_recipe))
    assert mod.SEEN == [1, 2, 3] and summary["global_step"] == 3
    assert summary["perf_tokens_per_s"] > 0 and summary["train_grad_norm"] > 0


def test_recipe_listed_plugin_module(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_listed_plugin.py").write_text(textwrap.dedent("""
        from tempering import ChatTemplate, hookimpl
        @hookimpl
        def register_chat_templates():
            return [ChatTemplate("listed", "{{ messages[0]['content'] }}", "from a recipe")]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from tempering.cli import main

    assert main(["plugins", "--plugin", "my_listed_plugin"]) == 0
    out = capsys.readouterr().out
    assert "listed" in out and "my_listed_plugin" in out
    assert main(["plugins", "--plugin", "no_such_plugin_module"]) == 2
    assert "cannot import plugin module 'no_such_plugin_module'" in capsys.readouterr().err


def test_a_plugin_installed_as_a_package_is_found_through_its_entry_point(tmp_path):
    pkg = tmp_path / "src"
    (pkg / "tempering_demo_plugin").mkdir(parents=True)
    (pkg / "tempering_demo_plugin" / "__init__.py").write_text("")
    (pkg / "tempering_demo_plugin" / "plugin.py").write_text(textwrap.dedent("""
        from tempering import ChatTemplate, hookimpl
        @hookimpl
        def register_chat_templates():
            return [ChatTemplate("demo", "{{ messages[0]['content'] }}", "installed demo")]
    """))
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "tempering-demo-plugin"
        version = "0.0.1"
        [project.entry-points.tempering]
        demo = "tempering_demo_plugin.plugin"
        [tool.setuptools]
        packages = ["tempering_demo_plugin"]
    """))
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(pkg)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get(
        "PYTHONPATH", "")])}
    listing = subprocess.run([sys.executable, "-m", "tempering.cli", "plugins"],
                             capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    demo = [line for line in listing.stdout.splitlines() if line.strip().startswith("demo ")]
    assert demo and "installed demo" in demo[0] and " demo " in demo[0]


def test_register_scorers(tiny_recipe):
    from tempering.pipeline.score import score_records
    from tempering.recipe import RecipeError, load_recipe, validate_components

    mod = _module("digit_scorer", """
        from tempering import Scorer, hookimpl
        def has_digit(prompts, completions, references, bonus=0.0):
            return [float(any(ch.isdigit() for ch in c)) + bonus for c in completions]
        @hookimpl
        def register_scorers():
            return [Scorer("has_digit", has_digit)]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    stages = [{"kind": "generate", "generate": {"prompts": tiny_recipe["data"]["train"]}},
              {"kind": "score"}]
    recipe = load_recipe({**tiny_recipe, "stages": stages,
                          "score": {"scorers": ["exact_match", {"name": "has_digit",
                                                                "bonus": 0.5}],
                                    "weights": [1.0, 2.0]}})
    validate_components(recipe, registry)
    record = {"messages": [{"role": "user", "content": "2+2?"}], "text": "4", "reference": "4"}
    (scored,) = score_records(recipe.stages[1], [record], registry, "here")
    assert scored["scores"] == {"exact_match": 1.0, "has_digit": 1.5}
    assert scored["score"] == 1.0 + 2 * 1.5
    bad = load_recipe({**tiny_recipe, "stages": stages,
                       "score": {"scorers": [{"name": "has_digit", "bonnus": 1}]}})
    with pytest.raises(RecipeError, match=r"stages\[1\].score.scorers\[0\].bonnus: not an "
                       "option of scorer 'has_digit'; did you mean 'bonus'"):
        validate_components(bad, registry)


def test_register_sample_filters(tmp_path):
    from tempering.pipeline.generate import StageContext
    from tempering.pipeline.score import run_filter
    from tempering.recipe import load_recipe

    mod = _module("shortest_filter", """
        from tempering import SampleFilter, hookimpl
        def shortest(pool, limit=1):
            order = sorted(range(len(pool)), key=lambda i: len(pool[i]["text"]))
            return [i in order[:limit] for i in range(len(pool))]
        @hookimpl
        def register_sample_filters():
            return [SampleFilter("shortest", shortest)]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    samples = tmp_path / "in.jsonl"
    texts = ["ccc", "a", "bb", "dddd"]
    samples.write_text("".join(
        json.dumps({"prompt_id": "p0", "messages": [{"role": "assistant", "content": t}],
                    "text": t, "score": 1.0, "num_tokens": len(t), "finish_reason": "stop"}) + "\n"
        for t in texts))
    view = load_recipe({"data": {"train": [{"path": "x.jsonl"}]},
                        "filter": {"filters": [{"name": "shortest", "limit": 2}]},
                        "wandb": {"mode": "disabled"}})
    out = run_filter(view, StageContext(1, "round-1/1-filter", tmp_path / "out", samples),
                     None, registry)
    kept = [json.loads(line)["text"]
            for line in (tmp_path / "out" / "kept.jsonl").read_text().splitlines()]
    assert kept == ["a", "bb"] and out["kept"] == 2 and out["dropped_by"] == {"shortest": 2}


def test_register_evolution_operators():
    from tempering.pipeline.evolve import _evolve_chunk
    from tempering.recipe import load_recipe
    from tests.pipeline.scripted_backend import ScriptedGenerator

    mod = _module("louder_operator", """
        from tempering import EvolutionOperator, hookimpl
        def louder(instruction, times=1):
            return ("Make it louder" + "!" * times + "\\n\\n#Original Instruction#:\\n"
                    + instruction + "\\n\\n#New Instruction#:\\n")
        @hookimpl
        def register_evolution_operators():
            return [EvolutionOperator("louder", louder, "depth", "more exclamation marks")]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    assert registry.get("evolution_operator", "louder").direction == "depth"
    view = load_recipe({"data": {"train": [{"path": "x.jsonl"}]}, "wandb": {"mode": "disabled"},
                        "evolve": {"operators": [{"name": "louder", "times": 3}],
                                   "filters": []}})
    items = [{"seed_id": "s0", "seed": "Name a bird.", "instruction": "Name a bird.",
              "operators": []}]
    (record,) = _evolve_chunk(view, 1, 0, items, ScriptedGenerator(), registry, "stage")
    assert record["operators"] == ["louder"] and record["prompt"].startswith("Make it louder!!!")
    assert record["parent"] == "Name a bird." and record["accepted"]
    from tempering.recipe import RecipeError, validate_components

    with pytest.raises(RecipeError, match=r"stages\[0\]\.evolve\.operators\[0\]\.loud: not an "
                                          "option of evolution_operator 'louder'"):
        validate_components(load_recipe({"data": {"train": [{"path": "x.jsonl"}]},
                                         "stages": [{"kind": "evolve", "evolve": {
                                             "seeds": [{"path": "x.jsonl"}],
                                             "operators": [{"name": "louder", "loud": 1}]}}]}),
                            registry)


def test_register_task_formatters():
    mod = _module("claim_formatter", """
        from tempering import BadRecordError, TaskFormatter, hookimpl
        def claim(record, phrasing, shout=False):
            if not record.get("claim"):
                raise BadRecordError("missing_field", "missing field 'claim'", "claim")
            instruction = ("True or false? " + record["claim"], record["claim"] + "\\nTrue?")
            return instruction[phrasing], record["verdict"].upper() if shout else record["verdict"]
        @hookimpl
        def register_task_formatters():
            return [TaskFormatter("claim", ("claim", "verdict"), 2, claim, "true or false")]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    formatter = registry.get("task_formatter", "claim")
    record = {"claim": "ka is lo.", "verdict": "true"}
    assert formatter.format(record, 1, shout=True) == ("ka is lo.\nTrue?", "TRUE")
    assert formatter.phrasings == 2 and formatter.fields == ("claim", "verdict")
    assert registry.providers["task_formatter"]["nli"] == "tempering.plugins.task_formatters"

    # The recipe names the formatter with its options (data.mixture.tasks[].formatter).
    from tempering.recipe import RecipeError, load_recipe, validate_components

    def mixture(formatter):
        return {"data": {"mixture": {"tasks": [{"task": "parity", "formatter": formatter}]}}}

    validate_components(load_recipe(mixture({"name": "claim", "shout": True})), registry)
    with pytest.raises(RecipeError, match=r"data\.mixture\.tasks\[0\]\.formatter\.shou: not an "
                                          r"option of task_formatter 'claim'; did you mean "
                                          r"'shout'\?"):
        validate_components(load_recipe(mixture({"name": "claim", "shou": True})), registry)


def test_register_tasks():
    import random

    mod = _module("countdown_task", """
        from tempering import Task, hookimpl
        def countdown(rng, top=9):
            n = rng.randint(1, top)
            return {"question": f"What comes before {n}?", "answer": str(n - 1)}
        @hookimpl
        def register_tasks():
            return [Task("countdown", "qa", countdown, "qa", "the number before another")]
    """)
    registry = build_registry(build_plugin_manager([mod], entry_points=False))
    task = registry.get("task", "countdown")
    record = task.generate(random.Random(0), top=1)
    assert record == {"question": "What comes before 1?", "answer": "0"}
    assert registry.get("task_formatter", task.formatter).format(record, 2)[1] == "0"
    assert registry.providers["task"]["parity"] == "tempering.plugins.tasks"

    # The recipe names the task with its options (data.mixture.tasks[].task).
    from tempering.recipe import RecipeError, load_recipe, validate_components

    def mixture(task):
        return {"data": {"mixture": {"tasks": [{"task": task, "formatter": "qa"}]}}}

    validate_components(load_recipe(mixture({"name": "countdown", "top": 5})), registry)
    with pytest.raises(RecipeError, match=r"data\.mixture\.tasks\[0\]\.task\.to: not an option "
                                          r"of task 'countdown'; did you mean 'top'\?"):
        validate_components(load_recipe(mixture({"name": "countdown", "to": 5})), registry)
