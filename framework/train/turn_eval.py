"""Multi-turn evaluation on held-out conversations: per-turn loss and multi-turn rollouts.

:func:`turn_losses` gives the teacher-forced NLL of every assistant turn by turn index, so a
model good at first answers and poor at later ones shows it. :func:`rollout` has the model answer
each user turn in order; every answer is checked for ending cleanly and for *role confusion*
(writing the next user, system or tool turn itself). :func:`role_headers` finds what a template
writes before such a turn from probe renderings, so the check knows no concrete template.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from tempering.chat.encoding import IGNORE_INDEX, Encoded, token_spans
from tempering.chat.templates import TemplateError
from tempering.generate.base import Completion, GenerationParams, Generator
from tempering.train.losses import chunked_per_token, forward_hidden, token_nll

__all__ = ["PROBE_ROLES", "role_headers", "role_confusion", "TurnNLL", "token_turns",
           "turn_losses", "rollout", "rollout_summary"]

PROBE_ROLES = ("user", "system", "tool")
# Plain words that no template writes itself, so each is found only where its message is.
_ASKED, _ANSWER, _PROBE = "alpha", "bravo", "charlie"

# A line that opens with a plain-text speaker tag of the user ("q:" is left out: it starts
# ordinary quiz answers far more often than it signals confusion).
_USER_TAG = re.compile(r"^[ \t]*(?:user[ \t]*:|human[ \t]*:|###[ \t]*(?:human|instruction)\b"
                       r"|<user>|\[user\])", re.IGNORECASE | re.MULTILINE)
# What skip_special_tokens=True leaves of a ChatML / Llama 3 header: the role name on its own.
_BARE_ROLE = re.compile(r"^[ \t]*(?:user|system|human)[ \t]*$", re.MULTILINE)


# -- role confusion ---------------------------------------------------------------------------


def role_headers(encoder: Any) -> dict[str, str]:
    """The text ``encoder``'s template writes before a user, system or tool message.

    Each role is probed with ``user, assistant, <role>`` (plain-word contents): the header is
    what lies between the end of the assistant turn (after its end-of-turn marker, where
    generation stops) and the probe's content, without an EOS and surrounding whitespace.

    Args:
        encoder: a :class:`tempering.ConversationEncoder`.

    Returns:
        ``{role: header}`` for the roles the template renders there with a non-empty header (a
        template that raises for a role, or drops its message, has no entry for it).
    """
    headers = {role: _probe_header(encoder, role) for role in PROBE_ROLES}
    return {role: header for role, header in headers.items() if header}


def _probe_header(encoder: Any, role: str) -> str | None:
    messages = [{"role": "user", "content": _ASKED}, {"role": "assistant", "content": _ANSWER},
                {"role": role, "content": _PROBE}]
    try:
        text = encoder.render(messages)
    except TemplateError:
        return None  # the template does not accept this role after an assistant turn
    turn_end = _turn_end(encoder, messages, text)
    at = text.find(_PROBE, max(turn_end, 0))
    if turn_end < 0 or at < 0:
        return None  # the template does not render this role's message
    header = text[turn_end:at].strip()
    eos = encoder.tokenizer.eos_token
    while eos and header.startswith(eos):  # a template that writes EOS after its end-of-turn
        header = header[len(eos):].lstrip()
    return header or None


def _turn_end(encoder: Any, messages: list[dict[str, Any]], text: str) -> int:
    """Where the assistant turn of a probe ends: after its end-of-turn token (or its content,
    for a template that writes none), -1 when its content cannot be found."""
    try:
        ids, offsets = encoder.tokenize(text)
        return int(encoder.spans.span(messages, 1, text, encoder.spans.tokens(ids, offsets),
                                      True).end)
    except TemplateError:
        at = text.find(_ANSWER)
        return at + len(_ANSWER) if at >= 0 else -1


def role_confusion(text: str, headers: Mapping[str, str]) -> str | None:
    """The kind of role confusion in a generated answer, or None for a clean one.

    Args:
        text: the answer as generated up to its stop, special tokens kept
            (``Completion.raw_text``).
        headers: ``{role: header}`` from :func:`role_headers`.

    Returns:
        ``header:<role>`` when the answer writes a role's header (the earliest one), else
        ``speaks_as_user`` when a line opens with a user speaker tag (``User:``, ``### Human``,
        ``<user>``, ...) or is only a role name (a header decoded without its special tokens).
    """
    found = [(text.find(h), role) for role, h in headers.items() if h and h in text]
    if found:
        return f"header:{min(found)[1]}"
    if _USER_TAG.search(text) or _BARE_ROLE.search(text):
        return "speaks_as_user"
    return None


# -- teacher-forced loss per turn -------------------------------------------------------------


class TurnNLL(Metric):
    """Summed token NLL and token count per assistant turn (1-based), summed across ranks.

    Args:
        max_turns: buckets kept; the last one holds every later turn too.
        kwargs: passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    nll_sum: torch.Tensor
    tokens: torch.Tensor

    def __init__(self, max_turns: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self.add_state("nll_sum", default=torch.zeros(max_turns), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.zeros(max_turns, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor, turns: torch.Tensor) -> None:
        """Add per-token NLLs ``[n]`` of tokens in turns ``[n]`` (turns <= 0 are ignored)."""
        keep = turns > 0
        bucket = turns[keep].clamp(max=self.max_turns) - 1  # [k]
        self.nll_sum.index_add_(0, bucket, nll[keep].to(self.nll_sum.dtype))
        self.tokens.index_add_(0, bucket, torch.ones_like(bucket))

    def compute(self) -> dict[int, dict[str, float]]:
        """``{turn: {"loss", "perplexity", "tokens"}}`` for the turns that have tokens."""
        out: dict[int, dict[str, float]] = {}
        for k in range(self.max_turns):
            n = int(self.tokens[k])
            if n:
                mean = float(self.nll_sum[k]) / n
                out[k + 1] = {"loss": mean, "perplexity": math.exp(mean), "tokens": n}
        return out


def token_turns(enc: Encoded, messages: Sequence[dict[str, Any]]) -> list[int]:
    """Per token of ``enc``, the 1-based assistant turn of the trained span it lies in (0 for
    an untrained token). Turn k is the k-th assistant message, trained or not.

    Raises:
        ValueError: a trained token lies in no span of an assistant message (an encoding whose
            masking trains every token has no turns).
    """
    assistants = [i for i, message in enumerate(messages) if message.get("role") == "assistant"]
    ordinal = {index: k + 1 for k, index in enumerate(assistants)}
    spans = sorted(enc.spans, key=lambda s: s[1])
    owner = token_spans(enc.offsets, [(start, end) for _, start, end in spans])
    turns = [0] * len(enc.input_ids)
    for t, (label, k) in enumerate(zip(enc.labels, owner, strict=True)):
        if label == IGNORE_INDEX:
            continue
        if k < 0 or spans[k][0] not in ordinal:
            raise ValueError(f"token {t} is trained but lies in no assistant message's span; "
                             "per-turn losses need a response-only masking (all_assistant)")
        turns[t] = ordinal[spans[k][0]]
    return turns


def _encode_all(encoder: Any, conversations: Sequence[Sequence[dict[str, Any]]],
                max_length: int | None) -> tuple[list[tuple[list[int], list[int]]], int]:
    """``(input_ids, token turns)`` of every conversation that encodes (within
    ``max_length`` tokens), and how many did not."""
    rows = []
    for messages in conversations:
        try:
            enc = encoder.encode(messages)
        except ValueError:  # TemplateError included: a record the template cannot train
            continue
        if max_length is None or len(enc.input_ids) <= max_length:
            rows.append((enc.input_ids, token_turns(enc, messages)))
    return rows, len(conversations) - len(rows)


def _batch_nll(model: Any, rows: list[tuple[list[int], list[int]]], pad_id: int,
               device: torch.device, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL ``[n]`` and turn ``[n]`` of every trained token of a right-padded batch."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r, _ in rows],
                       device=device)  # [b, s], right-padded
    turns = torch.tensor([t + [0] * (width - len(t)) for _, t in rows], device=device)  # [b, s]
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows],
                        device=device)  # [b, s]
    hidden = forward_hidden(model, {"input_ids": ids, "attention_mask": mask})  # [b, s, d]
    predicted = turns[:, 1:]  # [b, s-1]: the turn of the token each position predicts
    keep = predicted > 0
    nll = chunked_per_token(model, token_nll, hidden[:, :-1][keep], ids[:, 1:][keep],
                            chunk_size=chunk_size)  # [n]
    return nll, predicted[keep]


def turn_losses(model: Any, encoder: Any, conversations: Sequence[Sequence[dict[str, Any]]],
                *, max_turns: int = 8, batch_size: int = 8, chunk_size: int = 1024,
                max_length: int | None = None) -> dict[str, Any]:
    """Teacher-forced NLL of every assistant turn of held-out conversations, per turn index.

    Args:
        model: a causal LM (evaluated in eval mode without gradients; its mode is restored).
        encoder: a :class:`tempering.ConversationEncoder` whose masking trains every assistant
            turn (``all_assistant``).
        conversations: message lists; one that does not encode, or is longer than
            ``max_length`` tokens, is skipped and counted.
        max_turns: turn buckets (later turns count in the last).
        batch_size: conversations per forward pass (right-padded).
        chunk_size: positions projected to the vocabulary at a time.

    Returns:
        ``{"turns": TurnNLL.compute(), "conversations": used, "skipped": not encoded}``.
    """
    if getattr(encoder.masking, "all_tokens", False):
        raise ValueError(f"turn_losses: masking {encoder.masking.name!r} trains every token, so "
                         "there are no assistant turns; build the encoder with all_assistant")
    rows, skipped = _encode_all(encoder, conversations, max_length)
    rows.sort(key=lambda row: len(row[0]))  # similar lengths together: less padding
    tok = encoder.tokenizer
    pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
    device = next(model.parameters()).device
    metric = TurnNLL(max_turns).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                metric.update(*_batch_nll(model, rows[i:i + batch_size], pad_id, device,
                                          chunk_size))
    finally:
        model.train(was_training)
    turns = metric.compute() if rows else {}
    return {"turns": turns, "conversations": len(rows), "skipped": skipped}


# -- multi-turn rollouts ----------------------------------------------------------------------


def _turn_points(messages: Sequence[dict[str, Any]]) -> list[tuple[int, str | None]]:
    """``(index of the user message, reference answer or None)`` of every turn to answer: a
    user message followed by an assistant one (its reference), by another user message or by
    nothing (no reference: the model's own answer joins the history)."""
    points: list[tuple[int, str | None]] = []
    for j, message in enumerate(messages):
        if message.get("role") != "user":
            continue
        after = messages[j + 1] if j + 1 < len(messages) else None
        if after is None or after.get("role") == "user":
            points.append((j, None))
        elif after.get("role") == "assistant":
            points.append((j, after.get("content") or ""))
    return points


def _history(messages: Sequence[dict[str, Any]], upto: int,
             answers: Mapping[int, str]) -> list[dict[str, Any]]:
    """The messages through ``upto``, with the model's answers after the user messages that
    had no reference."""
    prompt: list[dict[str, Any]] = []
    for j, message in enumerate(messages[:upto + 1]):
        prompt.append(dict(message))
        if j in answers:  # only earlier turns have answers
            prompt.append({"role": "assistant", "content": answers[j]})
    return prompt


def rollout(generator: Generator, conversations: Sequence[Sequence[dict[str, Any]]],
            params: GenerationParams, *, headers: Mapping[str, str] | None = None
            ) -> list[dict[str, Any]]:
    """Answer every user turn of each conversation in order, one generate call per turn index.

    Earlier assistant turns in a prompt are the conversation's own (reference) answers where
    it has them, and the model's answers where it has none (prompt-only conversations such as
    MT-Bench's: user, user, ...).

    Args:
        generator: any :class:`tempering.generate.Generator`.
        conversations: message lists.
        params: sampling; one answer per turn (``n == 1``).
        headers: the template's role headers (:func:`role_headers`) for :func:`role_confusion`.

    Returns:
        One record per answered turn, in conversation then turn order: ``conversation``,
        ``turn`` (1-based), ``prompt``, ``reference``, ``answer``, ``raw``, ``finish_reason``,
        ``stopped`` and ``role_confusion``.
    """
    if params.n != 1:
        raise ValueError(f"rollout follows one answer per turn; got GenerationParams(n={params.n})")
    points = [_turn_points(messages) for messages in conversations]
    answers: list[dict[int, str]] = [{} for _ in conversations]
    records: list[dict[str, Any]] = []
    for k in range(max((len(p) for p in points), default=0)):
        todo = [i for i, p in enumerate(points) if len(p) > k]
        prompts = [_history(conversations[i], points[i][k][0], answers[i]) for i in todo]
        out = generator.generate(prompts, params)
        if len(out) != len(prompts):
            raise ValueError(f"the generator answered {len(out)} of {len(prompts)} prompts")
        for i, completions in zip(todo, out, strict=True):
            j, reference = points[i][k]
            if reference is None:  # the model's own answer is the history of later turns
                answers[i][j] = completions[0].text
            records.append(_record(i, k + 1, conversations[i][j], reference, completions[0],
                                   headers or {}))
    return sorted(records, key=lambda r: (r["conversation"], r["turn"]))


def _record(conversation: int, turn: int, user: dict[str, Any], reference: str | None,
            done: Completion, headers: Mapping[str, str]) -> dict[str, Any]:
    raw = done.raw_text if done.raw_text is not None else done.text
    return {"conversation": conversation, "turn": turn, "prompt": user.get("content"),
            "reference": reference, "answer": done.text, "raw": raw,
            "finish_reason": done.finish_reason, "stopped": done.finish_reason == "stop",
            "role_confusion": role_confusion(raw, headers)}


def _rates(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    n = max(1, len(records))
    return {"stop_rate": sum(bool(r["stopped"]) for r in records) / n,
            "role_confusion_rate": sum(r["role_confusion"] is not None for r in records) / n}


def rollout_summary(records: Sequence[dict[str, Any]], max_turns: int = 8) -> dict[str, Any]:
    """Stop and role-confusion rates of :func:`rollout` records, overall and per turn.

    Returns:
        ``answers``, ``stop_rate``, ``role_confusion_rate``, ``role_confusion_kinds``
        (``{kind: count}``) and ``turns``: ``{turn: {"stop_rate", "role_confusion_rate",
        "answers"}}``, turns beyond ``max_turns`` counted in the last. Rates are 0 without
        records.
    """
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_turn.setdefault(min(int(record["turn"]), max_turns), []).append(record)
    kinds = Counter(r["role_confusion"] for r in records if r["role_confusion"] is not None)
    return {"answers": len(records), **_rates(records), "role_confusion_kinds": dict(kinds),
            "turns": {k: {**_rates(v), "answers": len(v)} for k, v in sorted(by_turn.items())}}
