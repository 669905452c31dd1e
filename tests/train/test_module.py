"""Training, validation, checkpoints and the saved model on the review's cases (issue 5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tempering.recipe import RecipeError, bundled_recipes, load_recipe
from tempering.train.driver import run_recipe
from tests.conftest import REGISTRY
from tests.conftest import TINY as TINY_DIR

# -- item 1: pure low-precision weights whose updates round away ------------------------------


def _weights(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter((torch.randn(256, 256) * 0.02).to(dtype)),
            torch.nn.Parameter(torch.ones(256, dtype=dtype))]  # a norm weight


def test_bf16_weights_at_lr_1e5_are_refused_with_the_reason() -> None:
    from tempering.train.optim import LostUpdatesError, check_update_precision

    with pytest.raises(LostUpdatesError, match=r"rounds away for 8\d\.\d% .*bf16-mixed"):
        check_update_precision(_named(torch.bfloat16), 1e-5)
    assert check_update_precision(_named(torch.float32), 1e-5) == []  # fp32: every update lands
    assert check_update_precision(_named(torch.bfloat16), 1e-2) == []  # large enough to land
    # lr 1e-3 lands on the small weights but not on the norm weight: a warning, not a refusal
    assert check_update_precision(_named(torch.bfloat16), 1e-3) == ["norm.weight"]


def _named(dtype: torch.dtype) -> list[tuple[str, torch.nn.Parameter]]:
    return list(zip(["proj.weight", "norm.weight"], _weights(dtype), strict=True))


def test_the_lost_fraction_is_what_one_real_adamw_step_loses() -> None:
    # The reference: one AdamW step in pure bf16 (the update is lr * sign(grad) on step one).
    params = _weights(torch.bfloat16)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0).step()
    unchanged = sum(int((p.detach() == b).sum()) for p, b in zip(params, before, strict=True))
    total = sum(p.numel() for p in params)
    predicted = sum(int(((b + 1e-5) == b).sum()) for b in before)
    assert unchanged / total > 0.8  # the defect: most of the update is lost
    assert abs(unchanged - predicted) / total < 0.02
    assert bool((params[1].detach() == before[1]).all())  # no norm weight moves at all


def test_a_pure_bf16_run_with_a_small_lr_stops_before_training(tiny_recipe) -> None:
    from tempering.train.optim import LostUpdatesError

    tiny_recipe["model"]["dtype"] = "bfloat16"
    tiny_recipe["optim"]["lr"] = 1e-5
    with pytest.raises(LostUpdatesError, match="optim.lr 1e-05"):
        run_recipe(load_recipe(tiny_recipe))


def test_a_pure_bf16_run_whose_norm_weights_cannot_move_is_warned_about(tiny_recipe) -> None:
    tiny_recipe["model"]["dtype"] = "bfloat16"
    tiny_recipe["optim"]["lr"] = 1e-3
    tiny_recipe["trainer"]["max_steps"] = 1
    with pytest.warns(UserWarning, match=r"most updates round away in \d+ .*norm"):
        run_recipe(load_recipe(tiny_recipe))


def test_bundled_recipes_keep_fp32_master_weights() -> None:
    for name in bundled_recipes():
        recipe = load_recipe(name)
        precision = str(recipe.trainer.get("precision", "32"))
        assert not precision.endswith("-true") and precision not in ("bf16", "16"), name
        assert recipe.model.dtype == "float32", name


# -- item 8: a resumable last.ckpt without asking for step checkpoints -----------------------


class _KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


def _crash_and_resume(tiny_recipe, tmp_path: Path, kill_at: int, *overrides: str) -> int:
    """Run whole; run again crashing at ``kill_at``; resume from last; compare final weights."""
    tiny_recipe["trainer"]["max_steps"] = 14  # 2 epochs and a bit
    whole = load_recipe(tiny_recipe, [f"train.output_dir={tmp_path / 'a'}", *overrides])
    run_recipe(whole)
    broken = load_recipe(tiny_recipe, [f"train.output_dir={tmp_path / 'b'}", *overrides])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(broken, callbacks=[_KillAt(kill_at)])
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, weights_only=False)["global_step"]
    summary = run_recipe(load_recipe(tiny_recipe, [f"train.output_dir={tmp_path / 'b'}",
                                                   "train.resume_from=last", *overrides]))
    assert summary["global_step"] == 14
    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    return saved_step


def test_a_run_with_default_settings_resumes_from_its_last_epoch_end(tiny_recipe,
                                                                     tmp_path) -> None:
    tiny_recipe["data"].update(packing=False, group_by_length=False, batch_size=8)
    # 64 conversations, 8 per step: an epoch is 8 steps; the crash comes after the first epoch
    assert _crash_and_resume(tiny_recipe, tmp_path, 11) == 8


def test_last_ckpt_follows_the_step_schedule(tiny_recipe, tmp_path) -> None:
    saved = _crash_and_resume(tiny_recipe, tmp_path, 7, "train.last_checkpoint_every_n_steps=3",
                              "train.last_checkpoint_every_n_minutes=null")
    assert saved == 6


def test_last_ckpt_follows_the_clock(tiny_recipe, tmp_path) -> None:
    # a tiny interval: every step is "late", so the crash at step 5 loses nothing
    saved = _crash_and_resume(tiny_recipe, tmp_path, 5,
                              "train.last_checkpoint_every_n_minutes=1e-9")
    assert saved == 5


# -- items 10 and 11: perplexity is exp of the plain NLL; validation is chunked -------------


def _validate(tiny_recipe, *overrides: str):
    import lightning.pytorch as pl

    from tempering.data.datamodule import ConversationDataModule
    from tempering.models import load_fast_tokenizer as load_tokenizer
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.train.driver import trainer_arguments
    from tempering.train.module import CausalLMModule

    recipe = load_recipe(tiny_recipe, ["data.packing=false", *overrides])
    pm = build_plugin_manager()
    registry = build_registry(pm)
    dm = ConversationDataModule(recipe, load_tokenizer(recipe.model), pm, registry)
    dm.setup("fit")
    module = CausalLMModule(recipe, pm, registry)
    module.configure_model()
    args = trainer_arguments(recipe, Path(recipe.train.output_dir))
    trainer = pl.Trainer(logger=False, **{k: v for k, v in args.items() if k != "max_steps"})
    return trainer, module, dm


def _reference_nll(module, dm) -> float:
    """Token-mean NLL of the validation set from the model's own forward (plain HF loss)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dm.val_data:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += float(module.model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


def test_perplexity_ignores_label_smoothing(tiny_recipe) -> None:
    trainer, module, dm = _validate(tiny_recipe, "objective.label_smoothing=0.3")
    with torch.no_grad():  # a peaked distribution, where smoothing changes the loss a lot
        module.model.get_output_embeddings().weight.mul_(30)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    nll = _reference_nll(module, dm)
    assert metrics["val/perplexity"] == pytest.approx(math.exp(nll), rel=1e-4)
    assert abs(metrics["val/loss"] - nll) > 0.1  # the smoothed loss itself differs


def test_validation_projects_at_most_one_chunk_at_a_time(tiny_recipe) -> None:
    trainer, module, dm = _validate(tiny_recipe, "train.loss_chunk_size=16",
                                    "data.batch_size=4")
    rows: list[int] = []
    head = module.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        trainer.validate(module, datamodule=dm, verbose=False)
    finally:
        handle.remove()
    assert max(rows) <= 16 and sum(rows) > 16


# -- item 12: truncate_turns keeps the leading turns of a conversation ending with a user ------


def test_truncate_turns_keeps_a_conversation_that_ends_with_a_user_turn(tiny_tokenizer) -> None:
    from tempering.chat.encoding import ConversationEncoder
    from tempering.data.tokenization import encode_one

    encoder = ConversationEncoder(tiny_tokenizer, chat_template="chatml", registry=REGISTRY)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "tell me more " * 40}]
    row = encode_one(encoder, messages, 64, REGISTRY.get("overflow_policy", "truncate_turns"))
    assert row["error_kind"] == "", row["error"]
    assert row["length"] <= 64 and row["num_supervised"] > 0
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True)
               if label != -100]
    assert tiny_tokenizer.decode(trained) == "yo<|im_end|>"


# -- item 13: the tokenization cache key covers the code ---------------------------------------


def test_the_cache_fingerprint_changes_with_the_encoder_and_the_package(tiny_tokenizer,
                                                                        monkeypatch) -> None:
    import tempering
    import tempering.data.tokenization as tokenize
    from tempering.chat.encoding import ConversationEncoder
    from tempering.data.sources import Conversation

    encoder = ConversationEncoder(tiny_tokenizer, chat_template="chatml", registry=REGISTRY)
    conversations = [Conversation([{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b"}], "x:1")]
    base = tokenize._fingerprint(encoder, conversations, 64, "drop")
    monkeypatch.setattr(tokenize, "ENCODER_FORMAT", tokenize.ENCODER_FORMAT + 1)
    assert tokenize._fingerprint(encoder, conversations, 64, "drop") != base
    monkeypatch.undo()
    monkeypatch.setattr(tempering, "__version__", "99.0")
    assert tokenize._fingerprint(encoder, conversations, 64, "drop") != base


# -- item 14: the saved model stops where it was trained to stop -------------------------------


def test_saved_generation_config_stops_at_the_trained_end_of_turn(tiny_recipe, tmp_path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tiny_recipe["chat_template"] = "llama3"
    tiny_recipe["template_kwargs"] = {"enable_thinking": False}
    tiny_recipe["trainer"]["max_steps"] = 2
    summary = run_recipe(load_recipe(tiny_recipe))
    final = Path(summary["final_model"])
    tok = AutoTokenizer.from_pretrained(final)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert tok.eos_token_id != eot  # the tokenizer's EOS is another token
    stops = GenerationConfig.from_pretrained(final).eos_token_id
    assert stops[0] == eot and tok.eos_token_id in stops
    kwargs = json.loads((final / "chat_template_kwargs.json").read_text())
    assert kwargs == {"enable_thinking": False}
    assert summary["end_of_turn_tokens"] == {"<|eot_id|>": summary["end_of_turn_tokens"][
        "<|eot_id|>"]}


# -- smaller: data.num_workers was read nowhere ------------------------------------------------


def test_num_workers_is_no_longer_a_silent_setting(tiny_recipe) -> None:
    tiny_recipe["data"]["num_workers"] = 4
    with pytest.raises(RecipeError, match="data.num_workers: unknown key"):
        load_recipe(tiny_recipe)


# -- item 3: an architecture whose logits the chunked loss does not reproduce is refused -------


def test_a_run_on_a_refused_architecture_stops_with_one_clear_line(tiny_recipe, tmp_path,
                                                                   capsys) -> None:
    from transformers import RobertaConfig

    from tempering.cli import main

    # RoBERTa as a causal LM puts a dense + layer-norm transform before its decoder: our
    # decoder-then-head path would train on other logits than the model generates with.
    RobertaConfig(vocab_size=700, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, is_decoder=True).save_pretrained(tmp_path / "roberta")
    tiny_recipe["model"].update(name_or_path=str(tmp_path / "roberta"),
                                tokenizer="bundled:tiny-llama", attn_implementation="eager")
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(tiny_recipe))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Tokenizing" not in err  # refused before the data work
    last = err.strip().splitlines()[-1]
    assert last.startswith("tempering: error: ") and "RobertaForCausalLM" in last
    assert "refused" in last


def test_last_ckpt_is_written_between_accumulation_windows_only(tiny_recipe, tmp_path) -> None:
    # every micro-batch is "late"; a checkpoint inside a window would lose its accumulated grads
    tiny_recipe["data"]["batch_size"] = 1
    saved = _crash_and_resume(tiny_recipe, tmp_path, 5, "trainer.accumulate_grad_batches=3",
                              "train.last_checkpoint_every_n_minutes=1e-9")
    assert saved == 5


def test_the_clock_never_saves_inside_an_accumulation_window(monkeypatch, tmp_path) -> None:
    from types import SimpleNamespace

    import tempering.train.checkpoints as checkpoints

    clock = [0.0]
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: clock[0])
    saves: list[int] = []
    trainer = SimpleNamespace(global_step=0, is_global_zero=False,
                              strategy=SimpleNamespace(broadcast=lambda x: x, barrier=lambda: None))
    trainer.save_checkpoint = lambda path, weights_only: saves.append(trainer.global_step)
    callback = checkpoints.LastCheckpoint(tmp_path, every_n_minutes=1)
    callback.on_train_start(trainer, None)
    # (global step after the micro-batch, seconds): windows of 2 micro-batches
    for step, seconds in [(0, 5), (1, 10), (1, 70), (2, 80), (2, 85), (3, 90)]:
        trainer.global_step, clock[0] = step, seconds
        callback.on_train_batch_end(trainer, None, None, None, 0)
    assert saves == [2]  # late at 70 s, mid-window: the save waits for the step at 80 s


def test_a_model_with_another_attention_kernel_is_checked_on_its_first_step(tiny_recipe) -> None:
    import transformers
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.train.logit_check import UnsupportedModelError
    from tempering.train.module import CausalLMModule

    class Shifted(transformers.LlamaForCausalLM):  # logits the chunked loss cannot reproduce
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    # a kernel other than eager/sdpa (as flash attention is) is not run on the CPU at load time
    AttentionInterface.register("tempering_test_kernel", sdpa_attention_forward)
    config = transformers.AutoConfig.from_pretrained(TINY_DIR)
    model = Shifted._from_config(config, attn_implementation="tempering_test_kernel")
    pm = build_plugin_manager()
    module = CausalLMModule(load_recipe(tiny_recipe), pm, build_registry(pm), model=model)
    ids = torch.arange(1, 9)[None]
    with pytest.raises(UnsupportedModelError, match="Shifted"):
        module._loss({"input_ids": ids, "labels": ids})


_KL_PLUGIN = """
import torch.nn.functional as F
from tempering import Objective, hookimpl
def kl(student, labels, teacher, temperature=1.0):
    t = F.log_softmax(teacher.float() / temperature, -1)
    s = F.log_softmax(student.float() / temperature, -1)
    return (t.exp() * (t - s)).sum(-1)
@hookimpl
def register_objectives():
    return [Objective("test_kl", kl, needs_teacher=True)]
"""


def _kl_plugin(monkeypatch):
    import sys
    import textwrap

    mod = type(sys)("test_kl_plugin")
    exec(textwrap.dedent(_KL_PLUGIN), mod.__dict__)
    monkeypatch.setitem(sys.modules, "test_kl_plugin", mod)


def test_an_objective_that_needs_a_teacher_trains_with_one_and_keeps_it_out_of_checkpoints(
        tiny_recipe, monkeypatch) -> None:
    from tempering.train.driver import run_recipe

    _kl_plugin(monkeypatch)
    tiny_recipe.update(plugins=["test_kl_plugin"], objective={"name": "test_kl", "temperature": 2},
                       teacher={"name_or_path": "bundled:tiny-llama", "init": "random",
                                "dtype": "float32"})
    tiny_recipe["trainer"]["max_steps"] = 3
    tiny_recipe["train"].update(checkpoint_every_n_steps=3, save_final=False)
    summary = run_recipe(load_recipe(tiny_recipe))
    assert summary["global_step"] == 3 and math.isfinite(summary["train_loss"])
    ckpt = torch.load(Path(summary["output_dir"]) / "checkpoints" / "last.ckpt",
                      weights_only=False)
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    tiny_recipe["trainer"]["max_steps"] = 4
    tiny_recipe["train"]["resume_from"] = "last"
    assert run_recipe(load_recipe(tiny_recipe))["global_step"] == 4  # the teacher reloads


@pytest.mark.parametrize(("given", "message"), [
    ({"objective": "test_kl"}, "objective: 'test_kl' needs a teacher model; set "
                               "teacher.name_or_path"),
    ({"teacher": {"name_or_path": "bundled:tiny-llama"}},
     "teacher: set, but objective 'cross_entropy' does not use a teacher"),
])
def test_a_teacher_is_there_exactly_when_the_objective_needs_one(tiny_recipe, monkeypatch,
                                                                 given, message) -> None:
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.recipe import RecipeError, validate_components

    _kl_plugin(monkeypatch)
    recipe = load_recipe({**tiny_recipe, "plugins": ["test_kl_plugin"], **given})
    with pytest.raises(RecipeError) as info:
        validate_components(recipe, build_registry(build_plugin_manager(recipe.plugins)))
    assert str(info.value).startswith(message)
