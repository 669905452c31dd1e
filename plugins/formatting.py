"""Built-in ``format_example``: alpaca, prompt/completion, OpenAI messages and ShareGPT records."""

from __future__ import annotations

from typing import Any

from tempering import FORMATS, hookimpl, to_messages

__all__ = ["format_example"]


@hookimpl(trylast=True)
def format_example(record: dict[str, Any], source: Any) -> list[dict[str, Any]] | None:
    if source.format not in FORMATS:
        return None  # a format only another plugin knows
    return to_messages(record, source.format, system_prompt=source.system_prompt)
