"""The interface every generation backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["GenerationParams", "Generator"]


@dataclass(frozen=True)
class GenerationParams:
    """How to sample one answer.

    Attributes:
        max_new_tokens: the budget per answer.
        temperature: 0 is greedy decoding.
        top_p: nucleus sampling mass (with ``temperature > 0``).
        seed: sampling seed (with ``temperature > 0``), for reproducible samples.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@runtime_checkable
class Generator(Protocol):
    """Answers conversations: each prompt is a list of messages ending before the assistant
    turn to write; the backend renders it with the chat template the model is trained with
    and returns the answer text (stripped of the end-of-turn marker)."""

    def generate(self, prompts: Sequence[list[dict[str, Any]]],
                 params: GenerationParams) -> list[str]: ...
