"""Every hook tempering calls. Plugins implement them with ``@tempering.hookimpl``."""

from __future__ import annotations

from typing import Any

import pluggy

from tempering.components import KINDS, ComponentKind

__all__ = ["hookspec", "hookimpl"]

hookspec = pluggy.HookspecMarker("tempering")
hookimpl = pluggy.HookimplMarker("tempering")


# ---------------------------------------------------------------------------
# Registration hooks: one per row of tempering.components.KINDS, made from the row, so a new
# component kind is one table entry. Each returns a list of components; recipes pick them by name.
# ---------------------------------------------------------------------------


def _registration_hook(kind: ComponentKind) -> Any:
    def hook() -> list[Any]:  # a spec body is its docstring
        pass

    hook.__name__ = hook.__qualname__ = kind.hook
    hook.__module__ = __name__
    hook.__doc__ = (
        f"Return a list of :class:`tempering.{kind.contract.__name__}` ({kind.description}).\n\n"
        "    Called once per run when the component registry is built. Not firstresult: every\n"
        "    plugin's list is collected (return an empty list for none); a name registered twice\n"
        "    is an error naming both plugins.")
    return hookspec(hook)


for _kind in KINDS:
    globals()[_kind.hook] = _registration_hook(_kind)
__all__ += [k.hook for k in KINDS]


# ---------------------------------------------------------------------------
# Runtime hooks
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def format_example(record: dict[str, Any], source: Any, registry: Any
                   ) -> list[dict[str, Any]] | None:
    """Turn one raw data record into OpenAI-style messages.

    Called by the DataModule for every record of every source before tokenization. The
    built-in implementation (``trylast``) converts with the source's registered
    :class:`tempering.RecordFormat`; a new format is best added as a RecordFormat, and this
    hook is for plugins that take over the whole conversion.

    Args:
        record: the raw record (already field-mapped by the source's ``fields``).
        source: the :class:`tempering.recipe.DataSource` the record comes from (its ``format``
            as ``{name, options}``, ``path``, ``system_prompt``...).
        registry: the run's component registry (record formats by name).

    Returns:
        A list of ``{"role", "content"[, "train"]}`` dicts, or None to let the next plugin try.
        firstresult: the first non-None answer wins. Raise
        :class:`tempering.BadRecordError` for a record that cannot be converted.
    """


@hookspec(firstresult=True)
def compute_loss(module: Any, batch: dict[str, Any]) -> Any:
    """Compute the training loss of one micro-batch.

    Called by the LightningModule in ``training_step`` and ``validation_step``.

    Args:
        module: the :class:`tempering.SFTModule` (gives ``model``, ``objective``, ``recipe``).
        batch: the collated batch (``input_ids``, ``labels``, ``position_ids`` or
            ``attention_mask``, ``num_window_tokens``...).

    Returns:
        A :class:`tempering.LossOutput` (per-token loss sum and supervised-token count), or None
        to let the next plugin try. firstresult; wrap it with ``hookwrapper=True`` /
        ``wrapper=True`` to add terms to another plugin's loss.
    """
