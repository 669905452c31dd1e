"""Multi-turn evaluation blocks: role headers and role confusion, per-turn losses against a
plain full-logits reference, and rollouts whose histories are checked prompt by prompt."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tempering.chat.encoding import IGNORE_INDEX, ConversationEncoder
from tempering.generate import Completion, GenerationParams, HFGenerator
from tempering.generate.hf import stop_token_ids
from tempering.train import turn_eval
from tempering.train.turn_eval import TurnNLL, role_confusion, role_headers, rollout
from tests.conftest import REGISTRY, TINY, lively_tiny_model


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


SYSTEM = {"role": "system", "content": "You are a terse helper."}


def _encoder(tok: Any, template: str, masking: str = "all_assistant") -> ConversationEncoder:
    return ConversationEncoder(tok, chat_template=template, masking=masking, registry=REGISTRY)


# -- role headers -----------------------------------------------------------------------------

# Read off the built-in templates (plugins/chat_templates.py): what each writes before a user,
# system or tool message that follows an assistant turn. Mistral raises for a later system or
# tool message; Alpaca renders only user and assistant messages.
EXPECTED_HEADERS = {
    "alpaca": {"user": "### Instruction:"},
    "chatml": {"user": "<|im_start|>user", "system": "<|im_start|>system",
               "tool": "<|im_start|>tool"},
    "qwen2.5": {"user": "<|im_start|>user", "system": "<|im_start|>system",
                "tool": "<|im_start|>tool"},
    "llama3": {"user": "<|start_header_id|>user<|end_header_id|>",
               "system": "<|start_header_id|>system<|end_header_id|>",
               "tool": "<|start_header_id|>tool<|end_header_id|>"},
    "mistral": {"user": "[INST]"},
    "gemma": {"user": "<start_of_turn>user", "system": "<start_of_turn>system",
              "tool": "<start_of_turn>tool"},
    "phi3": {"user": "<|user|>", "system": "<|system|>", "tool": "<|tool|>"},
}


def test_every_builtin_template_has_its_expected_headers() -> None:
    assert sorted(EXPECTED_HEADERS) == sorted(REGISTRY.names("chat_template"))


@pytest.mark.parametrize("template", sorted(EXPECTED_HEADERS))
def test_role_headers_of_a_builtin_template(tiny_tokenizer, template: str) -> None:
    assert role_headers(_encoder(tiny_tokenizer, template)) == EXPECTED_HEADERS[template]


def test_role_headers_skip_the_roles_a_template_raises_for(shared_data, make_tokenizer) -> None:
    jinja = (shared_data / "chat_templates" / "gemma.jinja").read_text(encoding="utf-8")
    encoder = ConversationEncoder(make_tokenizer(jinja), chat_template=jinja, registry=REGISTRY)
    # The vendor Gemma template raises for a system message and for non-alternating roles.
    assert role_headers(encoder) == {"user": "<start_of_turn>user"}


def test_role_headers_drop_an_eos_written_after_the_end_of_turn(tiny_tokenizer) -> None:
    jinja = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
             "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    encoder = ConversationEncoder(tiny_tokenizer, chat_template=jinja, registry=REGISTRY)
    assert role_headers(encoder)["user"] == "<|user|>"


# -- role confusion ---------------------------------------------------------------------------

CLEAN = [
    "The answer is 42.",
    "Check the user manual, section 3.",
    "Each user can set a password.\nThe system stores it hashed.",
    "Steps:\n1. Open the file.\n2. Ask the user for input.\n\nDone.",
    "Q: what is 2+2?\nA: 4",
    "### Instructions for setup\nRun make.",
    "A user: someone who uses the tool.",
]


@pytest.mark.parametrize("template", ["chatml", "llama3", "mistral", "gemma", "phi3", "alpaca"])
@pytest.mark.parametrize("text", CLEAN)
def test_a_clean_answer_is_not_confused(template: str, text: str) -> None:
    assert role_confusion(text, EXPECTED_HEADERS[template]) is None


@pytest.mark.parametrize(("template", "text", "kind"), [
    ("chatml", "Sure, 4.<|im_end|>\n<|im_start|>user\nAnd 5?", "header:user"),
    ("chatml", "Fine.\n<|im_start|>system\nBe nice.", "header:system"),
    ("chatml", "Calling.<|im_start|>tool\n{}", "header:tool"),
    ("llama3", "4<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nthanks", "header:user"),
    ("llama3", "ok<|start_header_id|>tool<|end_header_id|>\n\n[]", "header:tool"),
    ("mistral", "It is 4. [INST] and 5? [/INST]", "header:user"),
    ("gemma", "Yes.<end_of_turn>\n<start_of_turn>user\nmore", "header:user"),
    ("phi3", "Done.<|end|>\n<|user|>\nagain", "header:user"),
    ("alpaca", "4\n\n### Instruction:\nadd 1", "header:user"),
    # the earliest header wins; a header is reported before a speaker tag
    ("chatml", "a<|im_start|>system\nb<|im_start|>user\nc", "header:system"),
    ("chatml", "User: hi\n<|im_start|>user\nx", "header:user"),
])
def test_a_header_mid_answer_is_named(template: str, text: str, kind: str) -> None:
    assert role_confusion(text, EXPECTED_HEADERS[template]) == kind


@pytest.mark.parametrize("text", [
    "4.\nUser: and 5?", "4.\n  human: thanks", "4.\n### Human: next", "4\n### Instruction:\nx",
    "<user> hello", "ok\n[USER] again", "USER: again",
    "4.\nuser\nAnd 5?",  # a ChatML header decoded without its special tokens
    "4.\n\nuser\n\nthanks",  # the same of a Llama 3 header
    "fine\nsystem\nBe brief.", "ok\nhuman",
])
def test_a_speaker_tag_or_bare_role_line_speaks_as_user(text: str) -> None:
    assert role_confusion(text, EXPECTED_HEADERS["chatml"]) == "speaks_as_user"
    assert role_confusion(text, {}) == "speaks_as_user"


# -- per-turn NLL -----------------------------------------------------------------------------


def test_turn_nll_buckets_by_turn_and_sums_states() -> None:
    metric = TurnNLL(max_turns=2)
    metric.update(torch.tensor([1.0, 3.0, 2.0, 9.0, 4.0]), torch.tensor([1, 1, 2, 0, 5]))
    other = TurnNLL(max_turns=2)
    other.update(torch.tensor([5.0]), torch.tensor([1]))
    metric.merge_state(other)  # what the ranks' states reduce to: a sum
    got = metric.compute()
    assert sorted(got) == [1, 2]  # turn 5 counts in the last bucket, turn 0 nowhere
    assert got[1]["tokens"] == 3 and got[1]["loss"] == pytest.approx(3.0)
    assert got[2]["tokens"] == 2 and got[2]["loss"] == pytest.approx(3.0)
    assert got[2]["perplexity"] == pytest.approx(torch.tensor(3.0).exp().item())
    fresh = TurnNLL(max_turns=3)
    fresh.update(torch.tensor([1.0]), torch.tensor([2]))
    assert list(fresh.compute()) == [2]  # turns without tokens are left out


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_token_turns_follow_the_labels_and_number_every_assistant(tiny_tokenizer,
                                                                 template: str) -> None:
    messages = [SYSTEM, _user("one"), _assistant("First reply.", train=False),
                _user("two"), _assistant("Second reply."), _user("three"),
                _assistant("Third reply.")]
    encoder = _encoder(tiny_tokenizer, template, masking="per_message")
    enc = encoder.encode(messages)
    turns = turn_eval.token_turns(enc, messages)
    assert [t != 0 for t in turns] == [label != IGNORE_INDEX for label in enc.labels]
    assert sorted(set(turns) - {0}) == [2, 3]  # the untrained first reply still is turn 1
    for turn, content in ((2, "Second reply."), (3, "Third reply.")):
        ids = [i for i, t in zip(enc.input_ids, turns, strict=True) if t == turn]
        assert tiny_tokenizer.decode(ids, skip_special_tokens=True).strip() == content


def _reference_turn_losses(model: Any, encoder: Any, conversations: list) -> dict[int, list]:
    """Per turn, every token's NLL from full logits, one unpadded conversation at a time; a
    turn is a contiguous run of trained tokens (every assistant turn is trained)."""
    out: dict[int, list] = {}
    for messages in conversations:
        enc = encoder.encode(messages)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]  # [s, v]
        nll = torch.nn.functional.cross_entropy(logits[:-1].float(), ids[0, 1:], reduction="none")
        turn = 0
        for t in range(1, len(enc.labels)):
            if enc.labels[t] == IGNORE_INDEX:
                continue
            turn += enc.labels[t - 1] == IGNORE_INDEX  # a new run of trained tokens
            out.setdefault(turn, []).append(float(nll[t - 1]))
    return out


CONVERSATIONS = [
    [SYSTEM, _user("Add 2 and 3."), _assistant("5")],
    [_user("Name a colour."), _assistant("Blue, like the sea on a calm day."),
     _user("Another?"), _assistant("Green.")],
    [SYSTEM, _user("Count to three."), _assistant("One, two, three."), _user("Backwards?"),
     _assistant("Three, two, one."), _user("Now to five, slowly please."),
     _assistant("One... two... three... four... five.")],
    [_user("Say hi."), _assistant("Hi!")],
]


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_turn_losses_equal_a_full_logits_reference(tiny_tokenizer, template: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).float()
    model.train()
    encoder = _encoder(tiny_tokenizer, template)
    broken = [_user("no answer here")]  # nothing to train: skipped and counted
    got = turn_eval.turn_losses(model, encoder, [*CONVERSATIONS, broken], batch_size=3,
                                chunk_size=7)
    assert model.training  # its mode is restored
    assert got["conversations"] == 4 and got["skipped"] == 1
    reference = _reference_turn_losses(model.eval(), encoder, CONVERSATIONS)
    assert sorted(got["turns"]) == sorted(reference) == [1, 2, 3]
    for turn, values in reference.items():
        assert got["turns"][turn]["tokens"] == len(values)
        mean = sum(values) / len(values)
        assert got["turns"][turn]["loss"] == pytest.approx(mean, abs=1e-4)
        assert got["turns"][turn]["perplexity"] == pytest.approx(torch.tensor(mean).exp().item(),
                                                                 rel=1e-4)
    capped = turn_eval.turn_losses(model, encoder, CONVERSATIONS, max_turns=2, batch_size=1)
    assert capped["turns"][2]["tokens"] == len(reference[2]) + len(reference[3])


def test_turn_losses_refuse_an_every_token_masking(tiny_tokenizer) -> None:
    model = lively_tiny_model()
    with pytest.raises(ValueError, match="trains every token"):
        turn_eval.turn_losses(model, _encoder(tiny_tokenizer, "chatml", masking="all"),
                              CONVERSATIONS)


# -- rollouts ---------------------------------------------------------------------------------


class ScriptedGenerator:
    """Answers with prepared completions in order and records every prompt it saw."""

    def __init__(self, completions: list[Completion]) -> None:
        self.completions = list(completions)
        self.calls: list[list[list[dict[str, Any]]]] = []

    def generate(self, prompts, params) -> list[list[Completion]]:
        self.calls.append([list(p) for p in prompts])
        return [[self.completions.pop(0)] for _ in prompts]


def test_rollout_builds_reference_and_own_answer_histories() -> None:
    referenced = [SYSTEM, _user("u1"), _assistant("ref1"), _user("u2"), _assistant("ref2")]
    prompt_only = [_user("q1"), _user("q2"), _user("q3")]
    open_end = [_user("v1"), _assistant("vref1"), _user("v2")]
    done = [Completion(t, 3, "stop") for t in ("a1", "g1", "b1")]
    done += [Completion("a2", 3, "stop"), Completion("g2\nUser: hm", 9, "length"),
             Completion("b2", 3, "stop", raw_text="b2<|im_start|>user")]
    done += [Completion("g3", 3, "stop")]
    gen = ScriptedGenerator(done)
    records = rollout(gen, [referenced, prompt_only, open_end], GenerationParams(),
                      headers=EXPECTED_HEADERS["chatml"])
    assert gen.calls == [
        [[SYSTEM, _user("u1")], [_user("q1")], [_user("v1")]],
        [[SYSTEM, _user("u1"), _assistant("ref1"), _user("u2")],
         [_user("q1"), _assistant("g1"), _user("q2")],
         [_user("v1"), _assistant("vref1"), _user("v2")]],
        [[_user("q1"), _assistant("g1"), _user("q2"), _assistant("g2\nUser: hm"), _user("q3")]],
    ]
    assert [(r["conversation"], r["turn"]) for r in records] == [
        (0, 1), (0, 2), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    by_key = {(r["conversation"], r["turn"]): r for r in records}
    assert by_key[0, 2] == {"conversation": 0, "turn": 2, "prompt": "u2", "reference": "ref2",
                            "answer": "a2", "raw": "a2", "finish_reason": "stop",
                            "stopped": True, "role_confusion": None}
    assert by_key[1, 2]["reference"] is None and not by_key[1, 2]["stopped"]
    assert by_key[1, 2]["role_confusion"] == "speaks_as_user"
    assert by_key[2, 2]["raw"] == "b2<|im_start|>user" and by_key[2, 2]["reference"] is None
    assert by_key[2, 2]["role_confusion"] == "header:user"

    summary = turn_eval.rollout_summary(records, max_turns=2)
    assert summary["answers"] == 7 and summary["stop_rate"] == pytest.approx(6 / 7)
    assert summary["role_confusion_rate"] == pytest.approx(2 / 7)
    assert summary["role_confusion_kinds"] == {"speaks_as_user": 1, "header:user": 1}
    assert summary["turns"] == {
        1: {"stop_rate": 1.0, "role_confusion_rate": 0.0, "answers": 3},
        2: {"stop_rate": 0.75, "role_confusion_rate": 0.5, "answers": 4}}  # turn 3 joins 2
    assert turn_eval.rollout_summary([])["stop_rate"] == 0.0


def test_rollout_wants_one_answer_per_turn() -> None:
    with pytest.raises(ValueError, match="n=2"):
        rollout(ScriptedGenerator([]), [[_user("x")]], GenerationParams(n=2))


def test_hf_completions_keep_special_tokens_in_raw_text(tiny_tokenizer) -> None:
    encoder = _encoder(tiny_tokenizer, "chatml")
    stop = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    gen = HFGenerator(lively_tiny_model(), tiny_tokenizer, encoder, [stop], progress=None)
    words = tiny_tokenizer("hi there", add_special_tokens=False)["input_ids"]
    header = [tiny_tokenizer.convert_tokens_to_ids("<|im_start|>"),
              *tiny_tokenizer("user", add_special_tokens=False)["input_ids"]]
    ended = gen._completion([*words, *header, stop, 0, 0], GenerationParams())
    assert (ended.text, ended.raw_text) == ("hi thereuser", "hi there<|im_start|>user")
    pad = tiny_tokenizer.pad_token_id
    cut = gen._completion([*words, *header, pad, pad], GenerationParams(stop=("there",)))
    assert (cut.text, cut.raw_text, cut.finish_reason) == ("hi ", "hi ", "stop")


def test_rollout_end_to_end_with_the_hf_backend(tiny_tokenizer) -> None:
    model = lively_tiny_model()
    encoder = _encoder(tiny_tokenizer, "chatml")
    stops = stop_token_ids(tiny_tokenizer, model, encoder, [_user("a"), _assistant("b")])
    gen = HFGenerator(model, tiny_tokenizer, encoder, stops, progress=None)
    conversations = [CONVERSATIONS[1], [_user("Tell a story."), _user("Shorter.")]]
    records = rollout(gen, conversations, GenerationParams(max_new_tokens=6),
                      headers=role_headers(encoder))
    assert [(r["conversation"], r["turn"]) for r in records] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    [[direct]] = gen.generate([[_user("Tell a story.")]], GenerationParams(max_new_tokens=6))
    assert direct.raw_text is not None and records[2]["raw"] == direct.raw_text
    assert records[2]["answer"] == direct.text
    for record in records:
        assert isinstance(record["raw"], str) and record["finish_reason"] in ("stop", "length")
        assert record["stopped"] == (record["finish_reason"] == "stop")
    assert turn_eval.rollout_summary(records)["answers"] == 4
