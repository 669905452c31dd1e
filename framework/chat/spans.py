"""Finding the characters an assistant message generates in a rendered conversation.

For one assistant message of a rendered conversation ``text``:

* content end: the template is rendered again with a probe string appended to the message's
  content; the probe must appear as a pure insertion, and where it appears the content ends.
* content start: where the content the assistant wrote begins (found verbatim before the content
  end, or with a second probe). The span never starts after it: an answer that begins like a
  pre-filled generation prompt (``<think>``, ``<b>``) is trained in full.
* start: the end of the generation prompt, i.e. what ``add_generation_prompt=True`` renders for
  the preceding messages (capped at the content start).
* turn end: the turn's own rendering ends where the following message's rendering begins (for the
  final message: where a placeholder user turn would begin). The end-of-turn token is the last
  added token of the turn's own rendering after the content, so that tool calls (Qwen's
  ``<tool_call>`` is an added token) and anything else the model writes before its stop token are
  trained. A template that writes no marker of its own (GLM) ends a turn at the next message's
  first token, unless that message is another assistant turn; its final turn has no end-of-turn
  token at all (see ``append_stop_token``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tempering.chat.templates import TemplateError

__all__ = ["PROBE", "Span", "SpanFinder", "common_prefix"]

PROBE = "\u27e6tempering-probe\u27e7"
_NEXT_TURN = "\u27e6tempering-next-turn\u27e7"

Render = Callable[..., str]


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Span:
    """The trained characters ``[start, end)`` of one message; ``eot`` is the token index of its
    trained end-of-turn token (None when the turn trains none)."""

    index: int
    start: int
    end: int
    eot: int | None


@dataclass
class _Tokens:
    ids: list[int]
    offsets: list[tuple[int, int]]
    starts: list[int]
    added: set[int]

    def at_or_after(self, pos: int) -> int:
        return bisect.bisect_left(self.starts, pos)

    def snap(self, pos: int) -> int:
        """``pos`` moved back to the start of the token that contains it."""
        t = bisect.bisect_right(self.starts, pos) - 1
        return self.offsets[t][0] if t >= 0 and self.offsets[t][1] > pos else pos


class SpanFinder:
    """Locates assistant spans for one template (``render(messages, add_generation_prompt)``)."""

    def __init__(self, render: Render, name: str, added_ids: set[int]) -> None:
        self.render, self.name, self.added_ids = render, name, added_ids

    def tokens(self, ids: list[int], offsets: list[tuple[int, int]]) -> _Tokens:
        return _Tokens(ids, offsets, [a for a, _ in offsets], self.added_ids)

    def span(self, messages: list[dict[str, Any]], index: int, text: str, tokens: _Tokens,
             train_on_eot: bool) -> Span:
        """The characters of ``text`` that assistant ``index`` generates."""
        content = messages[index].get("content") or ""
        if index == 0:
            raise TemplateError(
                "message 0 is an assistant message: there is no prompt before it, so the "
                "generation prompt that starts its span cannot be rendered")
        if content.strip():
            content_end = self.content_end(messages, index, text)
            content_start = self._content_start(messages, index, text, content_end)
            bound = content_end if content_start is None else content_start
            start = self._generation_start(messages, index, text, bound)
            if content_start is not None:
                start = min(start, content_start)
            limit = self._turn_limit(messages, index, text, tokens, content_end)
        else:  # a tool-call-only turn: what it generates starts at the generation prompt's end
            limit = self._turn_limit(messages, index, text, tokens, 0)
            content_end = start = self._generation_start(messages, index, text, limit)
        if index + 1 < len(messages) and limit < max(content_end, start + 1):
            # Rendered as the final message, the turn differs (Qwen3 adds an empty think block
            # to the last turn only), so where that rendering and this one part is no turn end.
            limit = self._lone_turn_end(messages, index, text, tokens)
        if start > content_end:
            raise TemplateError(
                f"template {self.name!r}: the generation prompt for message {index} ends at "
                f"character {start}, after the end of its content ({content_end})")
        try:
            eot = self._end_of_turn(messages, index, text, tokens, content_end, limit)
        except TemplateError:
            if train_on_eot:
                raise
            eot = None  # only the content is trained, and no end-of-turn token is needed
        if eot is None:
            end = content_end
        else:
            end = tokens.offsets[eot][1] if train_on_eot else tokens.offsets[eot][0]
        if end <= start:
            raise TemplateError(f"template {self.name!r}: message {index} renders to an empty span")
        return Span(index, start, end, eot if train_on_eot else None)  # eot: a trained stop

    # -- content --------------------------------------------------------------------------

    def content_end(self, messages: list[dict[str, Any]], index: int, text: str) -> int:
        content = messages[index]["content"]
        stripped = content.rstrip()
        at = self._probe(messages, index, text, stripped + PROBE + content[len(stripped):])
        if at is None and self.render(messages[:index] + [dict(messages[index], content=PROBE)]
                                      + messages[index + 1:]) == text:
            err = TemplateError(
                f"message {index}: template {self.name!r} does not render its content"
                + (" (it writes only the tool calls of a message that has them, as Llama 3.1 "
                   "does)" if messages[index].get("tool_calls") else "")
                + ", so it would never be trained; empty the content or use a template that "
                "renders it")
            err.kind = "content_not_rendered"  # type: ignore[attr-defined]
            raise err
        if at is None:
            raise TemplateError(
                f"template {self.name!r}: cannot locate the content of message {index} in the "
                "rendered text (changing its content changed the text elsewhere)")
        return at

    def _content_start(self, messages: list[dict[str, Any]], index: int, text: str,
                       content_end: int) -> int | None:
        content = messages[index]["content"]
        for core in (content.rstrip(), content.strip()):  # verbatim, or as a trimming template
            if text.endswith(core, 0, content_end):
                return content_end - len(core) + (len(core) - len(core.lstrip()))
        lead = len(content) - len(content.lstrip())
        return self._probe(messages, index, text, content[:lead] + PROBE + content[lead:])

    def _probe(self, messages: list[dict[str, Any]], index: int, text: str,
               probed_content: str) -> int | None:
        """Where ``PROBE`` lands in ``text`` when it is inserted into message ``index``."""
        probe = dict(messages[index], content=probed_content)
        probed = self.render(messages[:index] + [probe] + messages[index + 1:])
        at = common_prefix(text, probed)
        pure = probed[at:at + len(PROBE)] == PROBE and probed[at + len(PROBE):] == text[at:]
        return at if pure else None

    # -- start ----------------------------------------------------------------------------

    def _generation_start(self, messages: list[dict[str, Any]], index: int, text: str,
                          bound: int) -> int:
        prompt = self.render(messages[:index], add_generation_prompt=True)
        if text.startswith(prompt):
            return len(prompt)
        before = self.render(messages[:index], add_generation_prompt=False)
        header = prompt[len(before):] if prompt.startswith(before) else None
        if header is None:
            raise TemplateError(
                f"template {self.name!r}: add_generation_prompt=True changes the earlier "
                f"messages' text (before message {index}), so the generation prompt cannot be "
                "found")
        if text.startswith(before):
            # The generation prompt matches only in part (it pre-fills "<think>\n" that a turn
            # without reasoning does not render): the span starts where they part.
            matched = common_prefix(header, text[len(before):])
            if matched or not header:
                return len(before) + matched
        elif header:
            # The template rewrites earlier turns once later ones exist: find this turn's
            # generation prompt as the last occurrence of its header before the content.
            at = text.rfind(header, 0, bound)
            if at >= 0:
                return at + len(header)
        raise TemplateError(
            f"template {self.name!r}: the generation prompt {header!r} of message {index} does "
            "not appear in the rendered conversation before its content")

    # -- end ------------------------------------------------------------------------------

    def _turn_limit(self, messages: list[dict[str, Any]], index: int, text: str,
                    tokens: _Tokens, floor: int) -> int:
        """Where the rendering of the message after ``index`` begins (a token boundary).

        For the final message: where a placeholder next turn would begin, so that what a
        template writes after the whole conversation (Phi-3's EOS) is not part of the turn. A
        placeholder user turn can change how the final turn renders (Qwen3 then drops its think
        block), so a placeholder assistant turn is tried next, and the end of the text last.
        """
        if index + 1 < len(messages):
            return tokens.snap(common_prefix(text, self.render(messages[:index + 1])))
        for role in ("user", "assistant"):
            try:
                after = self.render(messages + [{"role": role, "content": _NEXT_TURN}])
            except TemplateError:
                continue
            limit = tokens.snap(common_prefix(text, after))
            if limit >= floor:
                return limit
        return len(text)

    def _lone_turn_end(self, messages: list[dict[str, Any]], index: int, text: str,
                       tokens: _Tokens) -> int:
        """Where turn ``index`` ends in ``text``, from the turn rendered as the last message:
        from where the two renderings part, the longest tail of the lone one that ``text``
        has there."""
        alone = self.render(messages[:index + 1])
        begin = common_prefix(text, alone)
        turn = alone[begin:]
        for k in range(len(turn)):
            if text.startswith(turn[k:], begin):
                return tokens.snap(begin + len(turn) - k)
        raise TemplateError(
            f"template {self.name!r}: message {index} renders differently when later messages "
            "follow it, so its turn end cannot be found")

    def _end_of_turn(self, messages: list[dict[str, Any]], index: int, text: str,
                     tokens: _Tokens, content_end: int, limit: int) -> int | None:
        """Token index of the turn's end-of-turn token, or None when the turn has none."""
        first = tokens.at_or_after(content_end)
        own = [t for t in range(first, tokens.at_or_after(limit)) if tokens.ids[t] in tokens.added]
        if own:
            return own[-1]
        if text[content_end:limit].strip():
            raise self._no_end_of_turn(text, content_end, index)
        # No marker of its own (GLM): the turn ends at the next message's first token.
        t = tokens.at_or_after(max(limit, content_end))
        while t < len(tokens.ids) and not text[slice(*tokens.offsets[t])].strip():
            t += 1
        if t == len(tokens.ids):
            return None  # the final turn, after which the template writes nothing
        if tokens.ids[t] not in tokens.added:
            raise self._no_end_of_turn(text, content_end, index)
        if index + 1 < len(messages) and messages[index + 1].get("role") == "assistant":
            header = self._header_after(messages, index)
            if header.startswith(text[slice(*tokens.offsets[t])]):
                return None  # the next assistant turn's header is no stop token
        return t

    def _header_after(self, messages: list[dict[str, Any]], index: int) -> str:
        plain = self.render(messages[:index + 1])
        prompt = self.render(messages[:index + 1], add_generation_prompt=True)
        return prompt[len(plain):] if prompt.startswith(plain) else ""

    def _no_end_of_turn(self, text: str, content_end: int, index: int) -> TemplateError:
        return TemplateError(
            f"template {self.name!r}: no end-of-turn token follows the content of message "
            f"{index} (text there: {text[content_end:content_end + 40]!r}); the tokenizer has no "
            "added token for the template's turn end. Add it as a special token or set "
            "train_on_eot: false")
