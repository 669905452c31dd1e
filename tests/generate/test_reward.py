"""The reward-model scorer: its own chat template, batched scores equal single ones, input order,
BOS once, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tempering.generate.reward import RewardModel
from tests.conftest import TINY

RM_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<<RM>>{{ m['role'] }}: {{ m['content'] }}"
               "<|im_end|>\n{% endfor %}")

PROMPTS = [[{"role": "user", "content": "hi"}],
           [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Add 12 and 30, then say the result twice. " * 6}],
           [{"role": "user", "content": "Reverse: ka lo mi"}],
           [{"role": "user", "content": "Name a colour."}],
           [{"role": "user", "content": "Count to five, slowly, with words between. " * 3}]]
COMPLETIONS = ["hello", "42 42", "mi lo ka", "red, or perhaps a deep and quiet blue " * 4, "one"]


def _build(path: Path, *, num_labels: int = 1, template: str | None = RM_TEMPLATE,
           add_bos: bool = False) -> Path:
    """A tiny Llama sequence classifier with seeded, lively weights and its own tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(TINY, num_labels=num_labels)
    config.pad_token_id = 0
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)  # larger than the initialisation, so scores differ visibly
    model.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    tokenizer.chat_template = template
    if add_bos:
        from tokenizers.processors import TemplateProcessing

        bos = tokenizer.bos_token
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="module")
def rm(rm_path) -> RewardModel:
    return RewardModel(str(rm_path), batch_size=3, device="cpu")


def test_batched_scores_equal_one_at_a_time_scores_in_input_order(rm) -> None:
    lengths = [len(rm.token_ids(p, c)) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert max(lengths) > 4 * min(lengths)  # the batches mix very different lengths
    batched = rm.score(PROMPTS, COMPLETIONS)
    single = [rm.score([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert batched == pytest.approx(single, abs=1e-5, rel=1e-5)
    assert len({round(s, 3) for s in single}) == len(single)  # distinct, so order is checked
    reverse = rm.score(PROMPTS[::-1], COMPLETIONS[::-1])
    assert reverse == pytest.approx(batched[::-1], abs=1e-5, rel=1e-5)


def test_a_pair_is_scored_on_the_reward_models_own_template(rm, rm_path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompt, completion = PROMPTS[2], COMPLETIONS[2]
    tok = AutoTokenizer.from_pretrained(TINY)
    expected = (f"{tok.bos_token}<<RM>>user: Reverse: ka lo mi<|im_end|>\n"
                "<<RM>>assistant: mi lo ka<|im_end|>\n")
    assert rm.render(prompt, completion) == expected
    model = AutoModelForSequenceClassification.from_pretrained(rm_path).eval()
    ids = torch.tensor([tok(expected, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        manual = model(input_ids=ids).logits[0, 0].item()
    assert rm.score([prompt], [completion]) == pytest.approx([manual], abs=1e-5)
    assert rm.token_ids(prompt, completion).count(tok.bos_token_id) == 1


def test_bos_is_added_once_whether_or_not_the_template_writes_it(tmp_path) -> None:
    with_bos = RewardModel(str(_build(tmp_path / "a", add_bos=True)), device="cpu")
    bos = with_bos.tokenizer.bos_token_id
    ids = with_bos.token_ids(PROMPTS[0], "hello")
    assert ids[0] == bos and ids.count(bos) == 1  # the template's BOS; none added on top
    plain = RewardModel(str(_build(tmp_path / "b", template=RM_TEMPLATE[len("{{ bos_token }}"):],
                                   add_bos=True)), device="cpu")
    ids = plain.token_ids(PROMPTS[0], "hello")
    assert ids[0] == bos and ids.count(bos) == 1  # the tokenizer's own BOS, added here


def test_a_chat_template_given_overrides_the_tokenizers(rm_path, tmp_path) -> None:
    other = tmp_path / "other.jinja"
    other.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    scorer = RewardModel(str(rm_path), chat_template=str(other), device="cpu")
    assert scorer.render(PROMPTS[0], "hello") == "[user] hi\n[assistant] hello\n"


def test_long_pairs_keep_bos_and_the_end_of_the_completion(rm_path, caplog) -> None:
    scorer = RewardModel(str(rm_path), max_length=16, device="cpu")
    full = RewardModel(str(rm_path), device="cpu").token_ids(PROMPTS[1], COMPLETIONS[1])
    with caplog.at_level("WARNING"):
        [value] = scorer.score(PROMPTS[1:2], COMPLETIONS[1:2])
    cut = scorer.token_ids(PROMPTS[1], COMPLETIONS[1])
    assert len(cut) == 16 and cut[0] == full[0] and cut[1:] == full[-15:]
    assert scorer.truncated == 2 and "1 of 1 pairs were longer than max_length=16" in caplog.text
    assert isinstance(value, float)


def test_two_labels_score_is_the_log_odds_of_label_one(tmp_path) -> None:
    scorer = RewardModel(str(_build(tmp_path / "two", num_labels=2)), device="cpu")
    ids = torch.tensor([scorer.token_ids(PROMPTS[0], "hello")])
    with torch.no_grad():
        logits = scorer.model(input_ids=ids).logits[0]
    assert scorer.score(PROMPTS[:1], ["hello"]) == pytest.approx(
        [(logits[1] - logits[0]).item()], abs=1e-5)


@pytest.mark.parametrize("case", ["missing", "three_labels", "no_template", "causal_lm"])
def test_problems_are_one_line_errors_naming_the_model(tmp_path, case) -> None:
    path = tmp_path / case
    if case == "three_labels":
        _build(path, num_labels=3)
    elif case == "no_template":
        _build(path, template=None)
    elif case == "causal_lm":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).save_pretrained(path)
        AutoTokenizer.from_pretrained(TINY).save_pretrained(path)
    expected = {"missing": "does not exist", "three_labels": "num_labels=3",
                "no_template": "no chat template", "causal_lm": "no trained classification head"}
    with pytest.raises(ValueError, match=expected[case]) as info:
        RewardModel(str(path), device="cpu")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_completion_per_prompt_is_needed(rm) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        rm.score(PROMPTS[:2], COMPLETIONS[:1])
    assert rm.score([], []) == []
