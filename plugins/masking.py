"""Built-in masking strategies: which messages of a conversation are trained."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tempering import MaskingStrategy, hookimpl

__all__ = ["all_assistant", "last_assistant", "per_message", "every_token"]


def all_assistant(messages: Sequence[dict[str, Any]]) -> list[bool]:
    """Every assistant message."""
    return [m.get("role") == "assistant" for m in messages]


def last_assistant(messages: Sequence[dict[str, Any]]) -> list[bool]:
    """Only the last assistant message."""
    flags = [False] * len(messages)
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            flags[i] = True
            break
    return flags


def per_message(messages: Sequence[dict[str, Any]]) -> list[bool]:
    """Each message's own ``train`` flag; an assistant message without one is trained."""
    flags = []
    for m in messages:
        flag = m.get("train")  # None (absent, or a null column in a dataset) = default
        flags.append(m.get("role") == "assistant" if flag is None else bool(flag))
    return flags


def every_token(messages: Sequence[dict[str, Any]]) -> list[bool]:
    """Every message (used with ``all_tokens=True``: the whole sequence is trained)."""
    return [True] * len(messages)


@hookimpl
def register_masking_strategies() -> list[MaskingStrategy]:
    return [
        MaskingStrategy("all_assistant", all_assistant, description="every assistant turn"),
        MaskingStrategy("last_assistant", last_assistant, description="the last assistant turn"),
        MaskingStrategy("per_message", per_message,
                        description="each message's train flag (assistant default: trained)"),
        MaskingStrategy("all", every_token, all_tokens=True,
                        description="every token, prompts and markup included"),
    ]
