"""ROUGE-L, exact and fast, for novelty filters over large pools of instructions.

:func:`rouge_l` is the ROUGE-L F-measure of the ``rouge-score`` package
(``RougeScorer(["rougeL"], use_stemmer=False).score(reference, candidate).fmeasure``): the same
tokens, the same longest common subsequence, the same floating-point formula. The LCS length is
computed bit-parallel (one machine-word operation per token of the other text, Hyyrö 2004), not
with a Python table.

:class:`NoveltyIndex` answers "which pool text is nearest to this one" without scoring every
pair: an inverted index gives, for every pool text that shares a token with the query, the size
of their common bag of tokens, which bounds the LCS; ``F <= 2 * overlap / (n_query + n_text)``.
Pool texts are then scored exactly in order of that bound, stopping when the bound falls below
the best exact score found.

Tokenizations: ``default`` is ``rouge-score``'s (lower case, runs of ``[a-z0-9]``; every other
character separates words and is dropped, so a Korean or Chinese text has no tokens and scores
0 against everything); ``unicode`` keeps letters and digits of every script (NFKC, lower case,
runs of letters and digits, each Chinese character or kana a token of its own, as those scripts
write no spaces between words). A callable ``text -> list[str]`` is a tokenization too.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["rouge_tokens", "rouge_l", "lcs_length", "NoveltyIndex"]

Tokenizer = str | Callable[[str], list[str]]

_ASCII_WORD = re.compile(r"[a-z0-9]+")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNICODE_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_EPS = 1e-12  # the bound and the exact score are the same number computed two ways


def rouge_tokens(text: str, tokenizer: Tokenizer = "default") -> list[str]:
    """The words ROUGE-L compares (see the module docstring for the tokenizations)."""
    if callable(tokenizer):
        return list(tokenizer(text))
    if tokenizer == "default":
        # rouge-score: lower(), non-[a-z0-9] runs -> spaces, split, keep ^[a-z0-9]+$ tokens.
        return _ASCII_WORD.findall(text.lower())
    if tokenizer == "unicode":
        return _UNICODE_WORD.findall(unicodedata.normalize("NFKC", text).lower())
    raise ValueError(f"ROUGE tokenizer {tokenizer!r}: use 'default', 'unicode' or a callable")


def _masks(tokens: Iterable[Any]) -> dict[Any, int]:
    """For each distinct token, the bit set of its positions."""
    masks: dict[Any, int] = {}
    for i, t in enumerate(tokens):
        masks[t] = masks.get(t, 0) | (1 << i)
    return masks


def _lcs_bits(masks: dict[Any, int], m: int, other: Iterable[Any]) -> int:
    """LCS length of the m-token sequence behind ``masks`` and ``other``: the zero bits of V."""
    full = (1 << m) - 1
    v = full
    for t in other:
        u = v & masks.get(t, 0)
        if u:
            v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


def lcs_length(a: list[Any], b: list[Any]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    return _lcs_bits(_masks(b), len(b), a) if b else 0


def _fmeasure(lcs: int, n_candidate: int, n_reference: int) -> float:
    # rouge-score's order of operations, so the floats are the same.
    precision = lcs / n_candidate
    recall = lcs / n_reference
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l(candidate: str, reference: str, tokenizer: Tokenizer = "default") -> float:
    """ROUGE-L F-measure of ``candidate`` against ``reference`` (0.0 when either has no
    tokens), equal to ``rouge-score``'s with the default tokenization."""
    c, r = rouge_tokens(candidate, tokenizer), rouge_tokens(reference, tokenizer)
    if not c or not r:
        return 0.0
    return _fmeasure(lcs_length(c, r), len(c), len(r))


class _Postings:
    """One token's pool entries and its count in each, as growing arrays."""

    __slots__ = ("ids", "counts", "size")

    def __init__(self) -> None:
        self.ids = np.empty(4, dtype=np.int64)
        self.counts = np.empty(4, dtype=np.int32)
        self.size = 0

    def append(self, entry: int, count: int) -> None:
        if self.size == len(self.ids):
            self.ids = np.resize(self.ids, 2 * self.size)
            self.counts = np.resize(self.counts, 2 * self.size)
        self.ids[self.size], self.counts[self.size] = entry, count
        self.size += 1


class NoveltyIndex:
    """A growing pool of texts that finds, for a new text, the pool text of highest ROUGE-L.

    Args:
        texts: the pool to start with.
        tokenizer: ``default`` (``rouge-score``'s), ``unicode`` or a callable.

    Example::

        index = NoveltyIndex(seed_instructions)
        score, nearest = index.max_rouge_l(candidate)
        if score <= 0.7:
            index.add(candidate)
    """

    def __init__(self, texts: Iterable[str] = (), tokenizer: Tokenizer = "default") -> None:
        rouge_tokens("", tokenizer)  # an unknown tokenization fails here, not at the first query
        self.tokenizer = tokenizer
        self.texts: list[str] = []
        self._vocab: dict[str, int] = {}
        self._entries: list[list[int]] = []
        self._lengths = np.empty(16, dtype=np.int64)
        self._postings: dict[int, _Postings] = {}
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> int:
        """Add ``text`` to the pool; returns its index."""
        index = len(self.texts)
        ids = [self._vocab.setdefault(t, len(self._vocab))
               for t in rouge_tokens(text, self.tokenizer)]
        self.texts.append(text)
        self._entries.append(ids)
        if index == len(self._lengths):
            self._lengths = np.resize(self._lengths, 2 * index)
        self._lengths[index] = len(ids)
        for t, count in Counter(ids).items():
            self._postings.setdefault(t, _Postings()).append(index, count)
        return index

    def _overlaps(self, counts: Counter) -> np.ndarray:
        """For every pool entry, the size of its common bag of tokens with the query."""
        overlap = np.zeros(len(self.texts), dtype=np.int64)
        for t, c in counts.items():
            p = self._postings[t]
            overlap[p.ids[:p.size]] += np.minimum(p.counts[:p.size], c)
        return overlap

    def max_rouge_l(self, text: str) -> tuple[float, int]:
        """The highest ROUGE-L F-measure of ``text`` (as the candidate) against a pool text
        (as the reference), and that text's index: the first of equals; index 0 when every
        score is 0; ``(0.0, -1)`` for an empty pool."""
        if not self.texts:
            return 0.0, -1
        query = [self._vocab.get(t, -1) for t in rouge_tokens(text, self.tokenizer)]
        counts = Counter(t for t in query if t >= 0)
        if not counts:
            return 0.0, 0
        overlap = self._overlaps(counts)
        near = np.flatnonzero(overlap)
        lengths = self._lengths[near]
        bound = 2.0 * overlap[near] / (len(query) + lengths)
        masks = _masks(query)
        best, best_i = 0.0, 0
        # The few highest bounds first, so that the best exact score prunes the rest.
        head = min(32, len(near))
        first = np.argpartition(-bound, head - 1)[:head] if head < len(near) else np.arange(head)
        scored = np.zeros(len(near), dtype=bool)
        scored[first] = True
        for batch in (first, None):
            if batch is None:
                batch = np.flatnonzero(~scored & (bound >= best - _EPS))
            for k in batch[np.argsort(-bound[batch], kind="stable")]:
                if bound[k] < best - _EPS:
                    break
                i = int(near[k])
                f = _fmeasure(_lcs_bits(masks, len(query), self._entries[i]), len(query),
                              int(lengths[k]))
                if f > best or (f == best and i < best_i):
                    best, best_i = f, i
        return best, best_i
