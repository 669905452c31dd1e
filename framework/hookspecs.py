"""Every hook tempering calls. Plugins implement them with ``@tempering.hookimpl``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from tempering.components import KINDS, ComponentKind

if TYPE_CHECKING:
    from tempering.data.batch import Batch
    from tempering.plugin_manager import Registry
    from tempering.recipe import DataSource, ModelConfig, Recipe
    from tempering.train.losses import LossContext, LossOutput

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
def format_example(record: dict[str, Any], source: DataSource, registry: Registry
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
def compute_loss(context: LossContext, batch: Batch) -> LossOutput | None:
    """Compute the training loss of one micro-batch.

    Called by the LightningModule in ``training_step`` and ``validation_step`` (under
    ``torch.no_grad`` there: a plugin may then also return the plain NLL for perplexity).

    Args:
        context: a :class:`tempering.LossContext`: the policy ``model``, the recipe's
            ``objective`` and its ``options``, ``chunk_size``, and the frozen ``teacher`` when
            the objective needs one.
        batch: the micro-batch, a :class:`tempering.Batch` (every key documented there).

    Returns:
        A :class:`tempering.LossOutput` (per-token loss sum and supervised-token count), or None
        to let the next plugin try. firstresult; wrap it with ``hookwrapper=True`` /
        ``wrapper=True`` to add terms to another plugin's loss.
    """


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_model(role: str, config: ModelConfig, seed: int) -> Any:
    """Load the model that plays ``role`` in a run.

    Called in ``LightningModule.configure_model`` (so under the strategy's initialisation
    context: FSDP may build it sharded) for the ``policy`` (the model being trained) and, when
    the objective needs one, the ``teacher``; later stages load the ``generator`` and
    ``reward`` models through it too.

    Args:
        role: ``policy``, ``teacher``, ``generator`` or ``reward``.
        config: that role's :class:`tempering.recipe.ModelConfig` (``model``, ``teacher``, ...).
        seed: the run's seed (for ``init: random``).

    Returns:
        A ``transformers`` causal LM (or one with the same ``get_decoder`` /
        ``get_output_embeddings`` / ``config``), or None to let the next plugin try.
        firstresult; the built-in loader (``AutoModelForCausalLM``) is ``trylast``.
    """


@hookspec(firstresult=True)
def load_tokenizer(config: ModelConfig) -> Any:
    """Load the run's tokenizer (the policy's, which every stage renders and encodes with).

    Args:
        config: the recipe's ``model`` section (``tokenizer`` or ``name_or_path``).

    Returns:
        A fast tokenizer (exact masks need character offsets), or None to let the next plugin
        try. firstresult; the built-in loader (``AutoTokenizer``) is ``trylast``.
    """


# ---------------------------------------------------------------------------
# Training loop extensions
# ---------------------------------------------------------------------------


@hookspec
def trainer_callbacks(recipe: Recipe) -> list[Any]:
    """Lightning Callbacks to add to the Trainer of a training stage.

    Called once per training run, before the Trainer is built. Every plugin's list is
    collected (not firstresult); per-step extensions (logging, schedules, probes) belong here
    rather than in a second loop. The built-in one logs throughput and the gradient norm.

    Args:
        recipe: the run's recipe.

    Returns:
        A list of ``lightning.pytorch.Callback`` instances (empty for none).
    """
