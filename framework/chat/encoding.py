"""Conversation -> token ids + labels, exact for any chat template.

The conversation is rendered once and tokenized once, so ``input_ids`` are exactly what
``tokenizer.apply_chat_template(messages, tokenize=True)`` returns (the one exception is
``append_stop_token``, which adds one token after a final turn that the template does not
close). The trained character spans are found from the rendered text itself, one assistant
message at a time (see :mod:`tempering.chat.spans`), and every token whose characters overlap a span
is trained. Offsets come from an untrimmed copy of the tokenizer backend, so whitespace-only
tokens keep their characters even where the tokenizer trims offsets (ByteLevel
``trim_offsets``).

Anything that does not line up is a :class:`TemplateError` that says where it failed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tempering.chat.markers import find_split_markers, split_markers_message, written_markers
from tempering.chat.spans import Span, SpanFinder
from tempering.chat.templates import ResolvedTemplate, TemplateError, render, resolve_chat_template

__all__ = ["IGNORE_INDEX", "ENCODER_FORMAT", "Encoded", "ConversationEncoder",
           "UnrenderedFieldError", "encode_conversation", "token_spans"]

IGNORE_INDEX = -100
# Bump whenever the labels the encoder produces, or the columns the tokenization cache holds,
# change: it is part of the cache's fingerprint, so stale data is never read back after an upgrade.
ENCODER_FORMAT = 4


class UnrenderedFieldError(TemplateError):
    """A trained message has a field (tool calls, reasoning) that its trained span lacks.

    Attributes:
        kind: the bad-record kind it is counted under.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Encoded:
    """One encoded conversation.

    Attributes:
        input_ids: token ids of the rendered conversation.
        labels: ``input_ids`` where trained, -100 elsewhere.
        text: the rendered conversation.
        offsets: ``(start, end)`` character offsets of every token in ``text``.
        spans: ``(message_index, start_char, end_char)`` of every trained message.
        stop_ids: the end-of-turn token id of each trained turn that has one.
        unterminated: indices of trained messages that train no end-of-turn token.
    """

    input_ids: list[int]
    labels: list[int]
    text: str
    offsets: list[tuple[int, int]] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    stop_ids: list[int] = field(default_factory=list)
    unterminated: list[int] = field(default_factory=list)

    @property
    def num_supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _untrimmed_backend(tokenizer: Any) -> Any:
    """A copy of the Rust backend whose post-processor does not trim offsets, or None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    data = json.loads(backend.to_str())

    def untrim(node: Any) -> bool:
        changed = False
        if isinstance(node, dict):
            if node.get("trim_offsets") is True:
                node["trim_offsets"], changed = False, True
            for value in node.values():
                changed = untrim(value) or changed
        elif isinstance(node, list):
            for value in node:
                changed = untrim(value) or changed
        return changed

    if not untrim(data.get("post_processor")):
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(json.dumps(data))
    copy.no_truncation()
    copy.no_padding()
    return copy


class ConversationEncoder:
    """Encodes conversations for one tokenizer, template and masking strategy.

    Args:
        tokenizer: a fast (Rust-backed) Hugging Face tokenizer; offsets are needed.
        chat_template: see :func:`tempering.chat.templates.resolve_chat_template`.
        masking: a registered masking-strategy name or a :class:`MaskingStrategy`.
        train_on_eot: also train each turn's end-of-turn token.
        registry: the component registry that names (``chatml``, ``all_assistant``) are looked
            up in; not needed when components are passed resolved.
        template_kwargs: extra variables for the template renderer (e.g. ``enable_thinking``).
        append_stop_token: a token appended (and trained) after a final trained turn that the
            template closes with no end-of-turn token (GLM): ``eos`` for the tokenizer's EOS, or
            a token string such as ``<|user|>``. None leaves such turns without a stop token.
        allow_split_markers: accept a template (other than the tokenizer's own) whose markers
            the tokenizer splits into pieces, for a model trained with them as text. They are
            listed in ``split_markers`` either way.
        masking_options: keyword options passed to the masking strategy's ``select``.
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
        append_stop_token: str | None = None,
        allow_split_markers: bool = False,
        masking_options: dict[str, Any] | None = None,
    ) -> None:
        from tempering.components import MaskingStrategy

        name = getattr(tokenizer, "name_or_path", "?")
        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError(f"tokenizer {name} is not a fast tokenizer; exact masks need "
                                "character offsets (load it with use_fast=True)")
        if registry is None and isinstance(masking, str):
            raise TemplateError(f"masking {masking!r} is a registered name; pass the run's "
                                "registry (tempering.build_registry(pm)) or a MaskingStrategy")
        self.tokenizer = tokenizer
        self.template: ResolvedTemplate = resolve_chat_template(chat_template, tokenizer, registry)
        self.template.kwargs.update(template_kwargs or {})
        self.split_markers = find_split_markers(
            tokenizer, written_markers(self.render, self.template.special_tokens))
        if self.split_markers and not (allow_split_markers or self.template.name == "tokenizer"):
            raise TemplateError(split_markers_message(self.template.name, name, self.split_markers))
        self.masking: MaskingStrategy = (
            masking if isinstance(masking, MaskingStrategy) else registry.get("masking", masking)
        )
        self.masking_options = dict(masking_options or {})
        self.train_on_eot = train_on_eot
        self.append_stop_token = append_stop_token
        self._stop_text, self.stop_token_id = self._stop_token(append_stop_token)
        self._untrimmed = _untrimmed_backend(tokenizer)
        self.spans = SpanFinder(self.render, self.template.name,
                                set(tokenizer.get_added_vocab().values()))

    def _stop_token(self, token: str | None) -> tuple[str, int | None]:
        """The ``append_stop_token`` text and id (``eos``: the tokenizer's EOS)."""
        if token is None:
            return "", None
        text = self.tokenizer.eos_token if token == "eos" else token
        token_id = self.tokenizer.convert_tokens_to_ids(text) if text else None
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise TemplateError(f"append_stop_token: {token!r} is not a single token of tokenizer "
                                f"{getattr(self.tokenizer, 'name_or_path', '?')}")
        return text, int(token_id)

    # -- public -----------------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return render(self.tokenizer, self.template, list(messages),
                      add_generation_prompt=add_generation_prompt)

    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids exactly as the tokenizer gives them, with untrimmed character offsets."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        if self._untrimmed is None:
            return ids, [tuple(o) for o in enc["offset_mapping"]]
        raw = self._untrimmed.encode(text, add_special_tokens=False)
        if list(raw.ids) != ids:
            raise TemplateError("the untrimmed copy of the tokenizer backend tokenizes "
                                "differently from the tokenizer; offsets cannot be trusted")
        return ids, [tuple(o) for o in raw.offsets]

    def encode(self, messages: Sequence[dict[str, Any]]) -> Encoded:
        """Encode one conversation; raises TemplateError or ValueError on problems."""
        messages = list(messages)
        if not messages:
            raise ValueError("empty conversation")
        text = self.render(messages)
        ids, offsets = self.tokenize(text)
        if self.masking.all_tokens:
            for index, message in enumerate(messages):  # the template must render every turn
                if isinstance(message.get("content"), str) and message["content"].strip():
                    self.spans.content_end(messages, index, text)
            return Encoded(ids, list(ids), text, offsets, [(-1, 0, len(text))])
        spans = self._spans(messages, text, ids, offsets)
        if not spans:
            raise ValueError(f"masking strategy {self.masking.name!r} selected no message to train")
        enc = Encoded(ids, _labels_for(ids, offsets, spans), text, offsets,
                      [(s.index, s.start, s.end) for s in spans],
                      [ids[s.eot] for s in spans if s.eot is not None],
                      [s.index for s in spans if s.eot is None])
        return self._append_stop(enc, spans[-1])

    def _spans(self, messages: list[dict[str, Any]], text: str, ids: list[int],
               offsets: list[tuple[int, int]]) -> list[Span]:
        selected = self.masking.select(messages, **self.masking_options)
        if len(selected) != len(messages):
            raise TemplateError(f"masking strategy {self.masking.name!r} returned "
                                f"{len(selected)} flags for {len(messages)} messages")
        tokens = self.spans.tokens(ids, offsets)
        spans: list[Span] = []
        for index, (message, chosen) in enumerate(zip(messages, selected, strict=True)):
            if message.get("tool_calls"):
                _check_calls(message, index, text, self.template.name, "in the conversation")
            if not chosen:
                continue
            if message.get("role") != "assistant":
                raise TemplateError(
                    f"masking strategy {self.masking.name!r} selected message {index} with role "
                    f"{message.get('role')!r}; only assistant messages can be trained")
            if not isinstance(message.get("content") or "", str):
                raise TemplateError(f"message {index}: assistant content must be a string")
            span = self.spans.span(messages, index, text, tokens, self.train_on_eot)
            if spans and span.start < spans[-1].end:
                raise TemplateError(
                    f"template {self.template.name!r}: the span of message {index} starts at "
                    f"character {span.start}, inside the span of message {spans[-1].index}")
            _check_trained_fields(message, index, text[span.start:span.end], self.template.name)
            spans.append(span)
        return spans

    def _append_stop(self, enc: Encoded, last: Span) -> Encoded:
        """Append the stop token after a final trained turn the template leaves open."""
        if (self.stop_token_id is None or last.eot is not None
                or enc.text[last.end:].strip() or not self.train_on_eot):
            return enc
        token = self._stop_text
        at = len(enc.text)
        enc.input_ids.append(self.stop_token_id)
        enc.labels.append(self.stop_token_id)
        enc.offsets.append((at, at + len(token)))
        enc.text += token
        enc.spans[-1] = (last.index, last.start, at + len(token))
        enc.stop_ids.append(self.stop_token_id)
        enc.unterminated.remove(last.index)
        return enc


def _call_names(message: dict[str, Any]) -> list[str]:
    names = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        names.append(str(function.get("name", "")))
    return names


def _check_calls(message: dict[str, Any], index: int, text: str, template: str,
                 where: str) -> None:
    missing = [n for n in _call_names(message) if n not in text]
    if missing:
        raise UnrenderedFieldError(
            "tool_calls_not_rendered",
            f"message {index}: template {template!r} does not render its tool calls {missing} "
            f"{where}, and the text is never trained without its call; use a template that "
            "renders tool calls (e.g. the model's own) or drop such records")


def _check_trained_fields(message: dict[str, Any], index: int, span_text: str,
                          template: str) -> None:
    """Never train the text of a turn without its tool calls or its reasoning."""
    _check_calls(message, index, span_text, template, "inside its trained span")
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning.strip() and reasoning.strip() not in span_text:
        raise UnrenderedFieldError(
            "reasoning_not_rendered",
            f"message {index}: template {template!r} does not render its reasoning_content in "
            "the trained turn (templates such as Qwen3 drop the reasoning of turns before the "
            "last user message); train only the final turn (masking: last_assistant) or use a "
            "template that keeps it")


def token_spans(offsets: list[tuple[int, int]], bounds: list[tuple[int, int]]) -> list[int]:
    """Per token, the index in ``bounds`` (character ``(start, end)`` ranges in order) of the
    range it lies in, -1 for none: a token lies in a range its characters overlap, a zero-width
    token in one it is strictly inside. This is what a trained span labels."""
    owner = [-1] * len(offsets)
    k = 0
    for t, (a, b) in enumerate(offsets):
        while k < len(bounds) and bounds[k][1] <= a:
            k += 1
        if k == len(bounds):
            break
        start, end = bounds[k]
        if (a < end and b > start) if b > a else start < a < end:
            owner[t] = k
    return owner


def _labels_for(ids: list[int], offsets: list[tuple[int, int]], spans: list[Span]) -> list[int]:
    """Label every token that lies in a trained span (:func:`token_spans`)."""
    owner = token_spans(offsets, [(span.start, span.end) for span in spans])
    labels = [ids[t] if k >= 0 else IGNORE_INDEX for t, k in enumerate(owner)]
    for span in spans:
        if not any(a < span.end and b > span.start for a, b in offsets if b > a):
            raise TemplateError(f"message {span.index}: its span [{span.start}, {span.end}) "
                                "covers no token")
    return labels


def encode_conversation(
    messages: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    chat_template: Any = None,
    masking: Any = "all_assistant",
    train_on_eot: bool = True,
    registry: Any = None,
    append_stop_token: str | None = None,
    allow_split_markers: bool = False,
) -> Encoded:
    """Encode one conversation with exact response-only labels.

    Args:
        messages: OpenAI-style dicts (``role``, ``content``, optional ``train: bool``,
            ``tool_calls``, ``reasoning_content``).
        tokenizer: a fast Hugging Face tokenizer.
        chat_template: a registered name, a ``.jinja`` path, a Jinja string, or None for the
            tokenizer's own template.
        masking: which messages are trained (a registered masking-strategy name).
        train_on_eot: also train each selected turn's end-of-turn token.
        append_stop_token, allow_split_markers: see :class:`ConversationEncoder`.

    Returns:
        :class:`Encoded` whose ``input_ids`` equal ``tokenizer.apply_chat_template(messages,
        chat_template=..., tokenize=True)["input_ids"]`` and whose ``labels`` are -100 outside
        the selected assistant turns.
    """
    encoder = ConversationEncoder(
        tokenizer, chat_template=chat_template, masking=masking, train_on_eot=train_on_eot,
        registry=registry, append_stop_token=append_stop_token,
        allow_split_markers=allow_split_markers,
    )
    return encoder.encode(messages)
