"""The interface every generation backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Completion", "GenerationContext", "GenerationParams", "Generator", "prompt_token_ids"]


@dataclass(frozen=True)
class GenerationParams:
    """How to sample the completions of one prompt.

    Attributes:
        n: completions per prompt.
        max_new_tokens: the budget per completion.
        temperature: 0 is greedy decoding (then ``n`` completions are the same one).
        top_p: nucleus sampling mass (with ``temperature > 0``).
        top_k: sample from the ``top_k`` most likely tokens (0: all).
        seed: sampling seed, for reproducible samples (None: the global RNG).
        stop: strings that end a completion (not included in its text), besides the template's
            end-of-turn and the model's EOS tokens.
    """

    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be >= 1, got {self.n}, "
                             f"{self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature >= 0, 0 < top_p <= 1 and top_k >= 0 are needed, got "
                             f"{self.temperature}, {self.top_p}, {self.top_k}")


@dataclass(frozen=True)
class Completion:
    """One generated answer.

    Attributes:
        text: the answer, without the end-of-turn token or stop string that ended it.
        num_tokens: tokens generated, the one that ended it included.
        finish_reason: ``stop`` (an end-of-turn or EOS token, or a stop string) or ``length``
            (``max_new_tokens`` ran out first).
        reasoning: the reasoning an endpoint returned apart from the answer
            (``reasoning_content``), None where it returned none (a local model's think block
            is part of ``text``).
        raw_text: the answer decoded with special tokens kept, up to (not including) the token
            or stop string that ended it; None where the backend has none. Not compared: it is
            another view of ``text``.
    """

    text: str
    num_tokens: int
    finish_reason: str
    reasoning: str | None = None
    raw_text: str | None = field(default=None, compare=False)


@runtime_checkable
class Generator(Protocol):
    """Answers conversations: each prompt is a list of messages ending before the assistant
    turn to write; the backend renders it with the chat template the model is trained with
    (generation prompt included) and returns ``params.n`` completions per prompt, in order."""

    def generate(self, prompts: Sequence[list[dict[str, Any]]],
                 params: GenerationParams) -> list[list[Completion]]: ...


@dataclass(frozen=True)
class GenerationContext:
    """What a generation backend is built from (``GeneratorBackend.build``).

    Attributes:
        model: the run's model where one is loaded in this process (None otherwise).
        model_path: where that model is (a local folder or hub id), for a backend that loads
            its own copy (vLLM).
        tokenizer: the run's tokenizer.
        encoder: the run's :class:`tempering.ConversationEncoder` (template and variables).
        stop_ids: the token ids that end an answer (the trained end-of-turn and EOS).
    """

    model: Any
    tokenizer: Any
    encoder: Any
    stop_ids: tuple[int, ...] = ()
    model_path: str | None = None


def prompt_token_ids(tokenizer: Any, encoder: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
    """A prompt's token ids: the run's template with the generation prompt, encoded without
    special tokens (the template writes its own BOS)."""
    text = encoder.render(list(messages), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
