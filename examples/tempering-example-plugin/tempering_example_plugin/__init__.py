"""An example tempering plugin: one component of every kind a recipe picks by name.

Installed (``pip install ./examples/tempering-example-plugin``), it is found through its
``tempering`` entry point; ``tempering plugins`` then lists its components beside the built-ins,
and ``tempering run <this folder>/tempering_example_plugin/example.yaml`` uses them all.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from tempering import (
    ChatTemplate,
    Completion,
    GeneratorBackend,
    MaskingStrategy,
    Objective,
    SampleFilter,
    Scorer,
    Task,
    TaskFormatter,
    hookimpl,
)

__version__ = "0.1.0"

# -- chat template: Alpaca-style headers, the tokenizer's EOS closing each answer ----------------

ALPACA_CHAT = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}\n\n"
    "{%- elif message['role'] == 'user' -%}### Instruction:\n{{ message['content'] }}\n\n"
    "{%- elif message['role'] == 'assistant' -%}### Response:\n{{ message['content'] }}"
    "{{ eos_token }}\n\n"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}### Response:\n{%- endif -%}"
)


@hookimpl
def register_chat_templates() -> list[ChatTemplate]:
    return [ChatTemplate("example_alpaca", ALPACA_CHAT,
                         "Alpaca-style '### Instruction:' / '### Response:' headers")]


# -- masking: the last two assistant turns -------------------------------------------------------


def last_two_answers(messages: Sequence[dict[str, Any]]) -> list[bool]:
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"][-2:]
    return [i in answers for i in range(len(messages))]


@hookimpl
def register_masking_strategies() -> list[MaskingStrategy]:
    return [MaskingStrategy("example_last_two", last_two_answers,
                            description="the last two assistant turns")]


# -- objective: focal loss, -(1 - p)^gamma log p of the label ------------------------------------


def focal(student_logits: torch.Tensor, labels: torch.Tensor,
          teacher_logits: torch.Tensor | None = None, gamma: float = 2.0) -> torch.Tensor:
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    log_p = torch.log_softmax(student_logits.float(), dim=-1).gather(1, labels[:, None])[:, 0]
    return -((1 - log_p.exp()) ** gamma) * log_p


@hookimpl
def register_objectives() -> list[Objective]:
    return [Objective("example_focal", focal,
                      description="focal loss: confident tokens weigh less (option gamma)")]


# -- generator backend: answers by repeating the prompt's last user message ------------------------


class EchoGenerator:
    """A backend with no model: each completion repeats the last user message, a word fewer
    for each further sample (so samples differ), up to ``max_new_tokens`` words."""

    def generate(self, prompts: Sequence[list[dict[str, Any]]], params: Any) -> list[list[Any]]:
        out = []
        for messages in prompts:
            words = next(m["content"] for m in reversed(messages) if m["role"] == "user").split()
            samples = []
            for k in range(params.n):
                kept = words[:max(1, len(words) - k)][:params.max_new_tokens]
                finish = "length" if len(kept) < len(words) - k else "stop"
                samples.append(Completion(" ".join(kept), len(kept), finish))
            out.append(samples)
        return out


@hookimpl
def register_generators() -> list[GeneratorBackend]:
    return [GeneratorBackend("example_echo", lambda context, **options: EchoGenerator(),
                             in_process=False,
                             description="repeats the prompt's last user message (no model)")]


# -- scorer and sample filter ----------------------------------------------------------------


def length_score(prompts: list[Any], completions: list[str], references: list[Any],
                 target: int = 8) -> list[float]:
    return [min(1.0, len(text.split()) / target) for text in completions]


@hookimpl
def register_scorers() -> list[Scorer]:
    return [Scorer("example_length", length_score,
                   description="words in the answer over `target` (at most 1)")]


def min_words(pool: list[dict[str, Any]], words: int = 3) -> list[Any]:
    return [True if len(s["text"].split()) >= words else f"fewer than {words} words"
            for s in pool]


@hookimpl
def register_sample_filters() -> list[SampleFilter]:
    return [SampleFilter("example_min_words", min_words,
                         description="drops answers of fewer than `words` words")]


# -- task formatter, and a generated task it formats --------------------------------------------

_PHRASINGS = ["Reverse the word: {word}", "Write '{word}' backwards."]


def reverse_format(record: dict[str, Any], phrasing: int) -> tuple[str, str]:
    return _PHRASINGS[phrasing].format(word=record["word"]), record["word"][::-1]


@hookimpl
def register_task_formatters() -> list[TaskFormatter]:
    return [TaskFormatter("example_reverse", ("word",), len(_PHRASINGS), reverse_format,
                          description="a word and its reverse, in 2 phrasings")]


def random_word(rng: random.Random, length: int = 5) -> dict[str, Any]:
    return {"word": "".join(rng.choice("abcdefghij") for _ in range(length))}


@hookimpl
def register_tasks() -> list[Task]:
    return [Task("example_reverse_words", "example_reverse", random_word,
                 description="random 5-letter words to reverse")]
