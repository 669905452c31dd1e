"""Markers a chat template writes that the tokenizer splits into pieces.

A vendor template names its turn markers (``<|im_start|>``, ``<｜Assistant｜>``, ``[gMASK]``,
``<start_of_turn>``) as literal text; the vendor's tokenizer knows them as single tokens. Paired
with another tokenizer, the same text becomes several ordinary pieces: the model is trained on a
marker it was never given as a token, and an end-of-turn marker it cannot emit as one token.

Markers are found where they matter: in what the template writes around the contents of plain
conversations (a system message, several turns, the generation prompt), plus the tokens a
registered template declares. The probe contents are words with no marker shapes, so every
marker found was written by the template itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MARKER_PATTERN", "SplitMarker", "find_split_markers", "split_markers_message",
           "written_markers"]

# Shapes vendors use for control text: <|x|>, DeepSeek's full-width <｜x｜>, <x> and </x>
# (<start_of_turn>, <sop>, <think>), [x] and [/x] (Mistral's [INST], GLM's [gMASK]).
MARKER_PATTERN = re.compile(
    r"<\|[^<>|\s]{1,48}\|>"
    r"|<｜[^<>｜]{1,48}｜>"
    r"|</?[A-Za-z_][A-Za-z0-9_:.-]{0,47}>"
    r"|\[/?[A-Za-z_][A-Za-z0-9_]{0,47}\]"
)

_PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "system", "content": "alpha"}, {"role": "user", "content": "bravo"},
     {"role": "assistant", "content": "charlie"}, {"role": "user", "content": "delta"},
     {"role": "assistant", "content": "echo"}),
    ({"role": "user", "content": "bravo"}, {"role": "assistant", "content": "charlie"},
     {"role": "user", "content": "delta"}, {"role": "assistant", "content": "echo"}),
)


@dataclass(frozen=True)
class SplitMarker:
    """A marker the template writes and the tokenizer encodes as ``pieces`` tokens."""

    marker: str
    pieces: int

    def __str__(self) -> str:
        return f"{self.marker} ({self.pieces} pieces)"


def written_markers(render: Callable[..., str], declared: tuple[str, ...] = ()) -> list[str]:
    """Marker-shaped strings the template writes for plain conversations, in first-seen order.

    Args:
        render: ``render(messages, add_generation_prompt=...)`` with the template applied.
        declared: marker strings a registered template declares (always included).
    """
    found: dict[str, None] = dict.fromkeys(declared)
    rendered = False
    for probe in _PROBES:
        for prompt in (False, True):
            messages = list(probe[:-1]) if prompt else list(probe)
            try:
                text = render(messages, add_generation_prompt=prompt)
            except Exception:  # noqa: BLE001 - e.g. a template that refuses system messages;
                continue       # the other probe covers it, and encoding reports real failures
            rendered = True
            found.update(dict.fromkeys(MARKER_PATTERN.findall(text)))
    return list(found) if rendered else list(declared)


def find_split_markers(tokenizer: Any, markers: list[str]) -> list[SplitMarker]:
    """The ``markers`` that ``tokenizer`` does not encode as a single token."""
    split = []
    for marker in markers:
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            split.append(SplitMarker(marker, len(ids)))
    return split


def split_markers_message(template: str, tokenizer: str, split: list[SplitMarker]) -> str:
    """The one-line refusal for a template whose markers ``tokenizer`` splits."""
    listed = ", ".join(str(s) for s in split)
    return (f"template {template!r} writes {listed}, which tokenizer {tokenizer} splits into "
            "pieces: the model would be trained on markers it never sees as tokens (and could not "
            "end a turn with one token). Use the model's own template (chat_template: tokenizer) "
            "or a tokenizer that has them as tokens (adding them needs resized embeddings); if "
            "the model was trained with them as text, set allow_split_markers: true")
