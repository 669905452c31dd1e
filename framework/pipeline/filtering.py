"""Running a chain of sample filters over a pool: each filter sees what the ones before it kept;
every dropped sample keeps the filter that dropped it and, where the filter gave one, its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tempering.components import FilterContext

__all__ = ["Verdicts", "apply_filters"]


@dataclass
class Verdicts:
    """The outcome of a filter chain over ``n`` samples.

    Attributes:
        kept: indices of the samples every filter kept, in order.
        dropped: index -> ``(filter name, reason)`` (the reason is ``""`` when the filter gave
            none).
    """

    kept: list[int] = field(default_factory=list)
    dropped: dict[int, tuple[str, str]] = field(default_factory=dict)

    def mark(self, records: list[dict[str, Any]], key: str = "accepted") -> list[dict[str, Any]]:
        """``records`` (the pool the chain ran over), each with the decision: ``key`` (kept or
        not), ``filtered_by`` and ``filter_reason`` (None for a kept one)."""
        out = []
        for i, record in enumerate(records):
            by, reason = self.dropped.get(i, (None, ""))
            out.append({**record, key: by is None, "filtered_by": by,
                        "filter_reason": reason or None})
        return out

    def counts(self) -> dict[str, int]:
        """Dropped samples by filter."""
        out: dict[str, int] = {}
        for name, _ in self.dropped.values():
            out[name] = out.get(name, 0) + 1
        return out


def _verdict(value: Any) -> tuple[bool, str]:
    if isinstance(value, str):
        return False, value
    return bool(value), ""


def apply_filters(pool: list[dict[str, Any]], picks: list[Any], registry: Any, label: str,
                  context: FilterContext | None = None) -> Verdicts:
    """Apply the filters ``picks`` (``ComponentConfig``s of sample filters) in order.

    Raises:
        ValueError: a filter failed on its input or returned the wrong number of verdicts,
            named with the stage (``label``) and the filter.
    """
    context = context if context is not None else FilterContext(label=label)
    alive = list(range(len(pool)))
    out = Verdicts()
    for picked in picks:
        if not alive:
            break
        flt = registry.get("sample_filter", picked.name)
        extra = {"context": context} if flt.uses_context else {}
        try:
            verdicts = flt.keep([pool[i] for i in alive], **picked.options, **extra)
        except (TypeError, ValueError, KeyError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise ValueError(f"{label}: filter {picked.name!r}: {message}") from None
        if len(verdicts) != len(alive):
            raise ValueError(f"{label}: filter {picked.name!r} returned {len(verdicts)} "
                             f"verdicts for {len(alive)} samples")
        survivors = []
        for i, value in zip(alive, verdicts, strict=True):
            keep, reason = _verdict(value)
            if keep:
                survivors.append(i)
            else:
                out.dropped[i] = (picked.name, reason)
        alive = survivors
    out.kept = alive
    return out
