"""Conversation -> token ids + labels, exact for any chat template.

The conversation is rendered once and tokenized once, so ``input_ids`` are exactly what
``tokenizer.apply_chat_template(messages, tokenize=True)`` returns. The trained character spans
are found from the rendered text itself, one assistant message at a time:

* start: the end of the generation prompt, i.e. what ``add_generation_prompt=True`` renders for
  the preceding messages. Everything after it (content, and any markup the model itself writes,
  such as an empty think block or a channel header) belongs to the assistant.
* content end: the template is rendered a second time with a probe string appended to this
  message's content; the probe must appear in the text as a pure insertion, and where it appears
  is where the content ends. This works whatever the template does to other turns.
* end of turn: the first added (special) token after the content, skipping whitespace: the
  token at which generation stops (``<|eot_id|>``, ``<|im_end|>``, ``<end_of_turn>``, ``</s>``,
  or the next turn's ``<|user|>`` for templates such as GLM that have no end-of-turn marker).
  Whitespace the template writes after that token (ChatML's newline) is not trained; a final
  turn followed by nothing has no end-of-turn token to train.

Anything that does not line up is a :class:`TemplateError` that says where it failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tempering.templates import ResolvedTemplate, TemplateError, render, resolve_chat_template

__all__ = ["IGNORE_INDEX", "Encoded", "ConversationEncoder", "encode_conversation"]

IGNORE_INDEX = -100
_PROBE = "\u27e6tempering-probe\u27e7"


@dataclass
class Encoded:
    """One encoded conversation.

    Attributes:
        input_ids: token ids of the rendered conversation.
        labels: ``input_ids`` where trained, -100 elsewhere.
        text: the rendered conversation.
        offsets: ``(start, end)`` character offsets of every token in ``text``.
        spans: ``(message_index, start_char, end_char)`` of every trained message.
    """

    input_ids: list[int]
    labels: list[int]
    text: str
    offsets: list[tuple[int, int]] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def num_supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ConversationEncoder:
    """Encodes conversations for one tokenizer, template and masking strategy.

    Args:
        tokenizer: a fast (Rust-backed) Hugging Face tokenizer; offsets are needed.
        chat_template: see :func:`tempering.templates.resolve_chat_template`.
        masking: a registered masking-strategy name or a :class:`MaskingStrategy`.
        train_on_eot: also train each turn's end-of-turn token.
        registry: the component registry (built on demand when None).
        template_kwargs: extra variables for the template renderer (e.g. ``enable_thinking``).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        chat_template: Any = None,
        masking: Any = "all_assistant",
        train_on_eot: bool = True,
        registry: Any = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from tempering.components import MaskingStrategy

        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')} is not a fast tokenizer; "
                "exact masks need character offsets (load it with use_fast=True)"
            )
        if registry is None and (isinstance(masking, str) or isinstance(chat_template, str)):
            from tempering.plugin_manager import build_plugin_manager, build_registry

            registry = build_registry(build_plugin_manager())
        self.tokenizer = tokenizer
        self.template: ResolvedTemplate = resolve_chat_template(chat_template, tokenizer, registry)
        self.template.kwargs.update(template_kwargs or {})
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.template.special_tokens if t not in vocab]
        if missing:
            raise TemplateError(
                f"template {self.template.name!r} writes {missing}, which tokenizer "
                f"{getattr(tokenizer, 'name_or_path', '?')} does not have as tokens: they would be "
                "split into pieces. Use the model's own template (chat_template: tokenizer) or a "
                "tokenizer with these special tokens (adding them needs resized embeddings)")
        self.masking: MaskingStrategy = (
            masking if isinstance(masking, MaskingStrategy) else registry.get("masking", masking)
        )
        self.train_on_eot = train_on_eot
        # Longest first so that "<|end|>" never shadows "<|endoftext|>".
        self._added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True)

    # -- public -----------------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return render(self.tokenizer, self.template, list(messages),
                      add_generation_prompt=add_generation_prompt)

    def encode(self, messages: Sequence[dict[str, Any]]) -> Encoded:
        """Encode one conversation; raises TemplateError or ValueError on problems."""
        messages = list(messages)
        if not messages:
            raise ValueError("empty conversation")
        text = self.render(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        if self.masking.all_tokens:
            for index, message in enumerate(messages):  # the template must render every turn
                if isinstance(message.get("content"), str) and message["content"].strip():
                    self._content_end(messages, index, text)
            return Encoded(ids, list(ids), text, offsets, [(-1, 0, len(text))])
        selected = self.masking.select(messages)
        if len(selected) != len(messages):
            raise TemplateError(
                f"masking strategy {self.masking.name!r} returned {len(selected)} flags for "
                f"{len(messages)} messages"
            )
        spans: list[tuple[int, int, int]] = []
        for index, (message, chosen) in enumerate(zip(messages, selected, strict=True)):
            if not chosen:
                continue
            if message.get("role") != "assistant":
                raise TemplateError(
                    f"masking strategy {self.masking.name!r} selected message {index} with role "
                    f"{message.get('role')!r}; only assistant messages can be trained"
                )
            start, end = self.assistant_span(messages, index, text)
            if spans and start < spans[-1][2]:
                raise TemplateError(
                    f"template {self.template.name!r}: the span of message {index} starts at "
                    f"character {start}, inside the span of message {spans[-1][0]}"
                )
            spans.append((index, start, end))
        if not spans:
            raise ValueError(f"masking strategy {self.masking.name!r} selected no message to train")
        labels = _labels_for(ids, offsets, spans)
        return Encoded(ids, labels, text, offsets, spans)

    def assistant_span(
        self, messages: list[dict[str, Any]], index: int, text: str
    ) -> tuple[int, int]:
        """Return the ``[start, end)`` characters of ``text`` that assistant ``index`` generates."""
        name = self.template.name
        content = messages[index].get("content")
        if not isinstance(content, str):
            raise TemplateError(f"message {index}: assistant content must be a string")
        if index == 0:
            raise TemplateError(
                "message 0 is an assistant message: there is no prompt before it, so the "
                "generation prompt that starts its span cannot be rendered"
            )
        content_end = self._content_end(messages, index, text)
        start = self._generation_start(messages, index, text, content_end)
        if start > content_end:
            raise TemplateError(
                f"template {name!r}: the generation prompt for message {index} ends at character "
                f"{start}, after the end of its content ({content_end})"
            )
        end = self._end_of_turn(text, content_end, index) if self.train_on_eot else content_end
        if end <= start:
            raise TemplateError(f"template {name!r}: message {index} renders to an empty span")
        return start, end

    # -- span search ------------------------------------------------------------------------

    def _content_end(self, messages: list[dict[str, Any]], index: int, text: str) -> int:
        content = messages[index]["content"]
        stripped = content.rstrip()
        probe = dict(messages[index], content=stripped + _PROBE + content[len(stripped):])
        probed = self.render(messages[:index] + [probe] + messages[index + 1:])
        at = _common_prefix(text, probed)
        inserted = probed[at:at + len(_PROBE)] == _PROBE and probed[at + len(_PROBE):] == text[at:]
        if not inserted:
            raise TemplateError(
                f"template {self.template.name!r}: cannot locate the content of message {index} "
                f"in the rendered text (changing its content changed the text elsewhere, around "
                f"character {at}: {text[max(0, at - 30):at + 30]!r})"
            )
        return at

    def _generation_start(
        self, messages: list[dict[str, Any]], index: int, text: str, content_end: int
    ) -> int:
        prompt = self.render(messages[:index], add_generation_prompt=True)
        if text.startswith(prompt):
            return len(prompt)
        before = self.render(messages[:index], add_generation_prompt=False)
        header = prompt[len(before):] if prompt.startswith(before) else None
        if header is None:
            raise TemplateError(
                f"template {self.template.name!r}: add_generation_prompt=True changes the earlier "
                f"messages' text (before message {index}), so the generation prompt cannot be found"
            )
        if text.startswith(before):
            # The generation prompt matches only in part (e.g. it pre-fills "<think>\n" that a
            # turn without reasoning does not render): the span starts where they part.
            matched = _common_prefix(header, text[len(before):])
            if matched or not header:
                return len(before) + matched
        elif header:
            # The template rewrites earlier turns once later ones exist: find this turn's
            # generation prompt as the last occurrence of its header before the content.
            at = text.rfind(header, 0, content_end)
            if at >= 0:
                return at + len(header)
        raise TemplateError(
            f"template {self.template.name!r}: the generation prompt {header!r} of message "
            f"{index} does not appear in the rendered conversation before its content"
        )

    def _end_of_turn(self, text: str, content_end: int, index: int) -> int:
        pos = content_end
        while pos < len(text) and text[pos].isspace():
            pos += 1
        for token in self._added:
            if token and text.startswith(token, pos):
                return pos + len(token)
        if pos == len(text):
            # The template writes nothing after the final turn (GLM stops on the next
            # "<|user|>"): there is no end-of-turn token in the text to train.
            return content_end
        raise TemplateError(
            f"template {self.template.name!r}: no end-of-turn token follows the content of "
            f"message {index} (text there: {text[content_end:content_end + 40]!r}); the tokenizer "
            "has no added token for the template's turn end. Add it as a special token or set "
            "train_on_eot: false"
        )


def _labels_for(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int, int]]
) -> list[int]:
    """Label every token whose characters overlap a trained span."""
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        while k < len(spans) and spans[k][2] <= a:
            k += 1
        if k < len(spans) and a < spans[k][2] and b > spans[k][1]:
            labels[t] = ids[t]
    for index, start, end in spans:
        if not any(a < end and b > start for a, b in offsets if b > a):
            raise TemplateError(f"message {index}: its span [{start}, {end}) covers no token")
    return labels


def encode_conversation(
    messages: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    chat_template: Any = None,
    masking: Any = "all_assistant",
    train_on_eot: bool = True,
    registry: Any = None,
) -> Encoded:
    """Encode one conversation with exact response-only labels.

    Args:
        messages: OpenAI-style dicts (``role``, ``content``, optional ``train: bool``).
        tokenizer: a fast Hugging Face tokenizer.
        chat_template: a registered name, a ``.jinja`` path, a Jinja string, or None for the
            tokenizer's own template.
        masking: which messages are trained (a registered masking-strategy name).
        train_on_eot: also train each selected turn's end-of-turn token.

    Returns:
        :class:`Encoded` whose ``input_ids`` equal ``tokenizer.apply_chat_template(messages,
        chat_template=..., tokenize=True)["input_ids"]`` and whose ``labels`` are -100 outside
        the selected assistant turns.
    """
    encoder = ConversationEncoder(
        tokenizer, chat_template=chat_template, masking=masking, train_on_eot=train_on_eot,
        registry=registry,
    )
    return encoder.encode(messages)
