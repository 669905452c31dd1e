"""Checks that a chat template's trained spans are exact (``tempering check-template`` and the
pytest kit's ``tempering_check_masks``)."""

from __future__ import annotations

from typing import Any

__all__ = ["SAMPLE_CONVERSATIONS", "sample_problems"]

# Single- and multi-turn, with a system prompt, and an answer with surrounding whitespace.
SAMPLE_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": " Hello, how can I help?\n"},
     {"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1, 2, 3"},
     {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You're welcome."}],
]


def sample_problems(encoder: Any, tokenizer: Any, messages: list[dict[str, Any]],
                    enc: Any) -> list[str]:
    """Problems found in one conversation's encoding ``enc`` (empty when its spans are exact):
    the token ids are not what ``tokenizer.apply_chat_template`` gives, a trained message's
    content is not inside its span, or another message's content is inside one."""
    problems = []
    ref = tokenizer.apply_chat_template(messages, chat_template=encoder.template.jinja,
                                        tokenize=True, **encoder.template.kwargs)["input_ids"]
    appended = [encoder.stop_token_id] if len(enc.input_ids) == len(ref) + 1 else []
    if list(ref) + appended != enc.input_ids:
        problems.append("input_ids differ from tokenizer.apply_chat_template")
    for index, start, end in enc.spans:
        if messages[index]["content"].strip() not in enc.text[start:end]:
            problems.append(f"message {index}: its content is not inside its span")
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            for _, start, end in enc.spans:
                if message["content"].strip() and message["content"].strip() in enc.text[start:end]:
                    problems.append(f"message {index} ({message['role']}) is inside a trained span")
    return problems
