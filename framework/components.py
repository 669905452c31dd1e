"""Component contracts that plugins register and recipes pick by name.

These dataclasses are the stable surface third-party plugin authors write against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChatTemplate", "ComponentKind", "EvolutionOperator", "FilterContext",
           "GeneratorBackend", "KINDS", "MaskingStrategy", "Metric", "Objective", "OverflowPolicy",
           "RecordFormat", "SampleFilter", "Scorer", "Task", "TaskFormatter"]


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template in the Hugging Face convention.

    The template sees ``messages``, ``bos_token``, ``eos_token`` and ``add_generation_prompt``,
    exactly as ``tokenizer.apply_chat_template`` renders it.

    Attributes:
        name: the name recipes use (``chat_template: llama3``).
        jinja: the template source.
        description: one line for ``tempering plugins``.
        special_tokens: marker strings the template writes that the tokenizer must know as
            single tokens; encoding with a tokenizer that lacks any of them is an error.
        template_kwargs: extra variables passed to the renderer (e.g. ``enable_thinking``).
    """

    name: str
    jinja: str
    description: str = ""
    special_tokens: tuple[str, ...] = ()
    template_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskingStrategy:
    """Which messages of a conversation are trained.

    Attributes:
        name: the name recipes use (``masking: last_assistant``).
        select: ``select(messages) -> list[bool]``, one flag per message; only assistant
            messages may be selected.
        all_tokens: train every token of the rendered conversation (system, user, markup and
            all); ``select`` is then not consulted.
        description: one line for ``tempering plugins``.
    """

    name: str
    select: Callable[[Sequence[dict[str, Any]]], list[bool]]
    all_tokens: bool = False
    description: str = ""


@dataclass(frozen=True)
class Objective:
    """A loss per supervised position.

    ``per_token(student_logits [n, v], labels [n], teacher_logits [n, v] | None, **options) -> [n]``.
    The framework selects the supervised positions, projects hidden states to logits in chunks
    and reduces the per-token losses to a token mean.

    Attributes:
        name: the name recipes use (``objective: cross_entropy``).
        per_token: the loss function.
        needs_teacher: whether the framework must provide ``teacher_logits``.
        description: one line for ``tempering plugins``.
    """

    name: str
    per_token: Callable[..., Any]
    needs_teacher: bool = False
    description: str = ""


@dataclass(frozen=True)
class RecordFormat:
    """A data record format (``format: alpaca`` on a data source).

    Attributes:
        name: the name recipes use.
        convert: ``convert(record, **options) -> messages`` or ``(messages, where)``: OpenAI-style
            ``{"role", "content"[, "train"]}`` dicts, and optionally, per message, its key path in
            the record (so errors name the field). Raise :class:`tempering.BadRecordError` for a
            record it cannot convert. The framework then checks roles and assistant content.
        detect: ``detect(record) -> bool``: whether a record looks like this format, for
            ``format: auto`` (formats are tried in registration order). None: never detected.
        description: one line for ``tempering plugins``.
    """

    name: str
    convert: Callable[..., Any]
    detect: Callable[[dict[str, Any]], bool] | None = None
    description: str = ""


@dataclass(frozen=True)
class OverflowPolicy:
    """What happens to a conversation longer than ``data.max_length`` (``data.overflow``).

    Attributes:
        name: the name recipes use.
        fit: ``fit(encoder, messages, encoded, max_length, **options) -> Encoded | list | None``:
            an encoding that fits, a list of them (the conversation becomes several examples),
            or None to drop the record (counted as ``too_long``). It may raise
            :class:`tempering.BadRecordError` to drop it under a kind of its own.
        description: one line for ``tempering plugins``.
    """

    name: str
    fit: Callable[..., Any]
    description: str = ""


@dataclass(frozen=True)
class GeneratorBackend:
    """A generation backend (``eval.generator: transformers``).

    Attributes:
        name: the name recipes use.
        build: ``build(context, **options) -> Generator``; ``context`` gives the run's
            ``model`` (None where the backend loads or reaches its own), its ``model_path``,
            ``tokenizer``, ``encoder`` (the chat template) and ``stop_ids``.
        in_process: the backend generates with a model loaded in this process (``context.model``;
            a stage loads it for the backend); False for one that loads its own (vLLM) or
            reaches a server.
        own_process: a stage runs the backend in a process of its own, even on one device, so
            what it holds (vLLM's GPU memory) is released when the stage ends, before training.
        description: one line for ``tempering plugins``.
    """

    name: str
    build: Callable[..., Any]
    in_process: bool = True
    description: str = ""
    own_process: bool = False


@dataclass(frozen=True)
class Scorer:
    """Scores generated samples (``score.scorers``), for filters and pass@N.

    Attributes:
        name: the name recipes use; a sample keeps its score under this name.
        score: ``score(prompts, completions, references, **options) -> list[float]``: one score
            per sample; ``prompts`` are message lists, ``completions`` the generated texts,
            ``references`` the prompt records' reference answers (None where there is none).
            Called once per chunk of samples, so a scorer that loads a model loads it per
            chunk unless it caches it.
        description: one line for ``tempering plugins``.
        own_process: a stage runs the scorer in a process of its own, so a model it caches
            (a reward model's GPU memory) is released when the stage ends, before training.
    """

    name: str
    score: Callable[..., list[float]]
    description: str = ""
    own_process: bool = False


@dataclass(frozen=True)
class SampleFilter:
    """Keeps or drops samples, seeing the whole candidate pool (``filter.filters``, and the
    instruction, instance and evolution filters of ``self_instruct`` and ``evolve`` stages).

    Attributes:
        name: the name recipes use; a dropped sample records it as ``filtered_by``.
        keep: ``keep(pool, **options) -> list``, one verdict per sample of ``pool`` (the
            samples the previous filters kept, in order): ``True`` keeps it; ``False``, or a
            string saying why, drops it (the reason goes to the rejects file and the W&B
            table). Pool entries are dicts: a ``filter`` stage's have ``prompt_id``, ``text``,
            ``score``, ``scores``, ``num_tokens`` and ``finish_reason``; a ``self_instruct`` or
            ``evolve`` stage's have ``text``, ``instruction``, ``input``, ``output``, and (evolve)
            ``parent`` and ``prompt``, the prompt that asked for the evolution.
        description: one line for ``tempering plugins``.
        uses_context: ``keep`` also gets ``context=``, a :class:`FilterContext`: the samples
            kept before this call (a growing pool), state kept for the stage's lifetime, and the
            stage's generator (for filters that ask a model).
    """

    name: str
    keep: Callable[..., list[Any]]
    description: str = ""
    uses_context: bool = False


@dataclass
class FilterContext:
    """What a filter with ``uses_context`` sees besides the pool.

    Attributes:
        history: the samples kept before this call, oldest first (the seed tasks and every
            instruction accepted so far in a ``self_instruct`` stage; empty in a ``filter``
            stage). A filter comparing with the whole pool compares with these and with the
            earlier samples of ``pool``.
        state: a dict that lives as long as the stage, for a filter's own index over
            ``history`` (it may index the new entries of ``history`` on each call).
        ask: ``ask(prompts, max_new_tokens) -> answers``: the stage's generator answering each
            prompt (a user message) greedily; None where the stage has no generator.
        notes: counts the stage reports in its summary (``{"no_gain: unclear answer": 3}``).
        label: the stage, for messages.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict[Any, Any] = field(default_factory=dict)
    ask: Callable[[list[str], int], list[str]] | None = None
    notes: Counter = field(default_factory=Counter)
    label: str = ""


@dataclass(frozen=True)
class EvolutionOperator:
    """A way to evolve an instruction (``evolve.operators``), Evol-Instruct style.

    Attributes:
        name: the name recipes use; an evolved example lists the operators that made it.
        prompt: ``prompt(instruction, **options) -> str``: the message asking the generator
            for the evolved instruction (options: e.g. the wording, ``template``).
        direction: ``depth`` (a harder version of the same task) or ``breadth`` (a new task
            of the same domain).
        description: one line for ``tempering plugins``.
    """

    name: str
    prompt: Callable[..., str]
    direction: str = "depth"
    description: str = ""


@dataclass(frozen=True)
class Metric:
    """A score of a generated answer against the reference (``eval.metrics``).

    Attributes:
        name: the name recipes use; the run summary reports ``<name>`` (after training) and
            ``<name>_before``, the mean over the held-out examples.
        score: ``score(prediction, reference, **options) -> float``.
        description: one line for ``tempering plugins``.
    """

    name: str
    score: Callable[..., float]
    description: str = ""


@dataclass(frozen=True)
class TaskFormatter:
    """Turns a record of a task dataset into an instruction and its answer, in one of several
    phrasings (FLAN's templates), for instruction tuning over task mixtures
    (``data.mixture.tasks[].formatter``).

    Attributes:
        name: the name recipes use (``formatter: classification``).
        fields: the record fields every record needs; a record without one is refused (or
            skipped and counted) naming the field.
        phrasings: how many phrasings it has; a mixture trains on some of them and holds
            others out for evaluation (``data.mixture.held_out_phrasings``).
        format: ``format(record, phrasing, **options) -> (instruction, answer)`` for phrasing
            index ``0 <= phrasing < phrasings``; it may raise :class:`tempering.BadRecordError`.
            Few-shot forms are built by the framework from the same phrasing: each exemplar's
            instruction and answer, then the instruction to answer.
        description: one line for ``tempering plugins``.
    """

    name: str
    fields: tuple[str, ...]
    phrasings: int
    format: Callable[..., tuple[str, str]]
    description: str = ""


@dataclass(frozen=True)
class Task:
    """A task whose records are generated procedurally (``data.mixture.tasks[].task``), so a
    mixture runs offline with no dataset to download.

    Attributes:
        name: the name recipes use (``task: parity``).
        formatter: the registered :class:`TaskFormatter` its records are made for.
        generate: ``generate(rng, **options) -> record``: one record (a dict with the
            formatter's fields) drawn with ``rng`` (a seeded ``random.Random``).
        family: what kind of task it is, for listings (defaults to the formatter's name).
        description: one line for ``tempering plugins``.
    """

    name: str
    formatter: str
    generate: Callable[..., dict[str, Any]]
    family: str = ""
    description: str = ""


@dataclass(frozen=True)
class ComponentKind:
    """One kind of component. :data:`KINDS` is the one table that drives everything about a
    kind: its registration hook (generated in :mod:`tempering.hookspecs`), building the registry,
    checking the names a recipe gives, and ``tempering plugins``.

    Attributes:
        name: the kind's name (``chat_template``), as errors and ``tempering plugins`` say it.
        hook: the registration hook plugins implement (``register_chat_templates``).
        contract: the class every registered component is an instance of.
        recipe_keys: the recipe keys that pick components of this kind, dotted, ``[]`` for
            every item of a list (``data.train[].format``).
        description: what the components of this kind do, for the hook's docstring and listing.
        is_name: whether a recipe value names a registered component (``chat_template`` also
            takes files and inline Jinja).
        options_of: the function a component's recipe options are passed to (None: options
            are free-form, as template variables are).
        positional: how many leading parameters of that function the framework fills.
        reserved: keyword parameters the framework fills (never recipe options).
    """

    name: str
    hook: str
    contract: type
    recipe_keys: tuple[str, ...]
    description: str
    is_name: Callable[[str], bool] = lambda value: True
    options_of: Callable[[Any], Callable[..., Any]] | None = None
    positional: int = 0
    reserved: tuple[str, ...] = ()

    def option_names(self, component: Any) -> set[str] | None:
        """The options a component of this kind accepts (its function's keyword parameters
        after the ``positional`` ones); None when it accepts any (``**kwargs``, templates)."""
        if self.options_of is None:
            return None
        import inspect

        params = list(inspect.signature(self.options_of(component)).parameters.values())
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params[self.positional:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in self.reserved}


def names_a_template(value: str) -> bool:
    """Whether a ``chat_template`` value is a registered name (not ``tokenizer``, a ``.jinja``
    path or an inline Jinja string)."""
    return not (value == "tokenizer" or value.endswith(".jinja") or "/" in value
                or "{%" in value or "{{" in value)


KINDS: tuple[ComponentKind, ...] = (
    ComponentKind("record_format", "register_record_formats", RecordFormat,
                  ("data.train[].format", "data.validation[].format",
                   "generate.prompts[].format", "eval.prompts[].format",
                   "eval.conversations[].format"),
                  "how data records become conversations", lambda value: value != "auto",
                  options_of=lambda c: c.convert, positional=1),
    ComponentKind("chat_template", "register_chat_templates", ChatTemplate, ("chat_template",),
                  "Jinja chat templates that render conversations", names_a_template),
    ComponentKind("masking", "register_masking_strategies", MaskingStrategy, ("masking",),
                  "which messages of a conversation are trained",
                  options_of=lambda c: c.select, positional=1),
    ComponentKind("overflow_policy", "register_overflow_policies", OverflowPolicy,
                  ("data.overflow",), "what happens to conversations longer than max_length",
                  options_of=lambda c: c.fit, positional=4),
    ComponentKind("objective", "register_objectives", Objective, ("objective",),
                  "losses per supervised token", options_of=lambda c: c.per_token, positional=3),
    ComponentKind("generator", "register_generators", GeneratorBackend,
                  ("eval.generator", "generate.generator"), "generation backends",
                  options_of=lambda c: c.build, positional=1),
    ComponentKind("metric", "register_metrics", Metric, ("eval.metrics[]",),
                  "scores of generated answers against references",
                  options_of=lambda c: c.score, positional=2),
    ComponentKind("scorer", "register_scorers", Scorer, ("score.scorers[]",),
                  "scores of generated samples (verifiers, reward models)",
                  options_of=lambda c: c.score, positional=3),
    ComponentKind("sample_filter", "register_sample_filters", SampleFilter,
                  ("filter.filters[]", "self_instruct.filters[]", "self_instruct.instance_filters[]",
                   "evolve.filters[]"),
                  "which generated samples are kept, seeing the whole pool",
                  options_of=lambda c: c.keep, positional=1, reserved=("context",)),
    ComponentKind("evolution_operator", "register_evolution_operators", EvolutionOperator,
                  ("evolve.operators[]",), "ways to evolve an instruction (Evol-Instruct)",
                  options_of=lambda c: c.prompt, positional=1),
    ComponentKind("task_formatter", "register_task_formatters", TaskFormatter,
                  ("data.mixture.tasks[].formatter", "data.mixture.held_out_tasks[].formatter"),
                  "records of task datasets as instructions in several phrasings",
                  lambda value: value != "", options_of=lambda c: c.format, positional=2),
    ComponentKind("task", "register_tasks", Task,
                  ("data.mixture.tasks[].task", "data.mixture.held_out_tasks[].task"),
                  "procedurally generated task datasets (offline instruction tuning)",
                  lambda value: value != "", options_of=lambda c: c.generate, positional=1),
)
