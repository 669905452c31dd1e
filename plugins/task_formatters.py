"""Built-in task formatters (FLAN-style templates, in tempering's own wording): classification,
extraction, translation, summarization, question answering and natural-language inference.

Each turns a record of its task into ``(instruction, answer)`` in one of five phrasings that
differ in framing and order (instruction first or last, labelled fields or plain text, options
as a list or inline), so a mixture can hold one or two out and still train on three. Field
values are stripped; numbers are taken as their decimal text. A missing or empty field, or one
of the wrong type, raises :class:`tempering.BadRecordError` naming the field; only a phrasing
index out of range (a programming error, not bad data) raises ``ValueError``. The phrasings are
short on purpose: the tiny test model has a small vocabulary and a short context.
"""

from __future__ import annotations

from typing import Any

from tempering import BadRecordError, TaskFormatter, hookimpl

__all__ = [
    "NLI_ANSWERS",
    "NLI_LABELS",
    "classification",
    "extraction",
    "nli",
    "qa",
    "register_task_formatters",
    "summarization",
    "translation",
]

# The order of integer NLI labels (MNLI's) and FLAN's answers for them.
NLI_LABELS = ("entailment", "neutral", "contradiction")
NLI_ANSWERS = ("yes", "it is not possible to tell", "no")
# Classification records may leave the question out (SST-2 has none); this one then stands in.
DEFAULT_QUESTION = "Which option fits?"

# Placeholders: the record's fields, and the options as {bullets} (one "- option" a line),
# {commas} ("a, b, c"), {slashes} ("a / b / c") or {ors} ("a, b or c").
CLASSIFICATION = (
    "{text}\n\n{question}\nOptions:\n{bullets}",
    "Text: {text}\nQuestion: {question}\nChoose from: {commas}",
    "{question} Answer {ors}.\n{text}",
    "Possible answers: {slashes}\n{text}\n{question}",
    'Q: {question} ({commas})\n"{text}"\nA:',
)
EXTRACTION = (
    "{text}\n\nWhat is {target} in the text above?",
    "Extract {target} from this text:\n{text}",
    "Text: {text}\nFind {target}.",
    'In "{text}", what is {target}?',
    "{text}\nGive only {target}.",
)
TRANSLATION = (
    "Translate from {source_language} to {target_language}:\n{source}",
    "{source}\n\nTranslate this from {source_language} into {target_language}.",
    'What is "{source}" ({source_language}) in {target_language}?',
    "{source_language}: {source}\n{target_language}:",
    "Rewrite in {target_language}, from {source_language}: {source}",
)
SUMMARIZATION = (
    "{document}\n\nSummarize the text above.",
    "Summarize: {document}",
    "Text: {document}\nSummary:",
    "In a few words, what does this say?\n{document}",
    "{document}\nTL;DR:",
)
# Each phrasing in two forms: with the record's context, and without one.
QA = (
    ("{context}\n\n{question}", "{question}"),
    ("Context: {context}\nQuestion: {question}", "Question: {question}"),
    ("Answer using the text.\n{context}\nQ: {question}\nA:", "Q: {question}\nA:"),
    ("{question}\nUse this: {context}", "{question} Answer briefly."),
    ("Read this: {context}\nNow answer: {question}", "Answer this question: {question}"),
)
NLI = (
    "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?\n"
    "Options:\n{bullets}",
    '{premise}\n\nIs it true that "{hypothesis}"?\nChoose from: {commas}',
    'Can we conclude "{hypothesis}" from "{premise}"? Answer {ors}.',
    "Options: {slashes}\n{premise}\nClaim: {hypothesis}\nIs the claim true?",
    "Suppose this: {premise}\nDoes this follow: {hypothesis}\nAnswer {ors}.",
)


def _text(record: dict[str, Any], key: str, *, required: bool = True) -> str:
    """A field's stripped text; "" for an absent optional one."""
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BadRecordError("missing_field", f"missing or empty field {key!r}", key)
        return ""
    # bool is a subclass of int, but True or False is no task's text
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRecordError(
            "bad_type", f"field {key!r} must be a string, got {type(value).__name__}", key
        )
    return str(value).strip()


def _template(templates: tuple[Any, ...], phrasing: int, name: str) -> Any:
    if isinstance(phrasing, bool) or not isinstance(phrasing, int):
        raise ValueError(f"formatter {name!r}: phrasing must be an int, got {phrasing!r}")
    if not 0 <= phrasing < len(templates):
        raise ValueError(
            f"formatter {name!r} has phrasings 0 to {len(templates) - 1}, not {phrasing}"
        )
    return templates[phrasing]


def _option_list(value: Any, field: str, count: int | None = None) -> list[str]:
    """Options from a record or a formatter option: distinct non-empty strings (numbers are
    taken as their text), ``count`` of them or at least 2."""
    if value is None:
        raise BadRecordError("missing_field", f"no {field!r}: the options to choose from", field)
    if not isinstance(value, (list, tuple)):
        raise BadRecordError("bad_type", f"{field!r} must be a list of strings", field)
    options = [
        str(o).strip()
        for o in value
        if isinstance(o, (str, int)) and not isinstance(o, bool) and str(o).strip()
    ]
    if len(options) != len(value) or len(set(options)) != len(options):
        raise BadRecordError("bad_type", f"{field!r} must hold distinct non-empty strings", field)
    if (count is not None and len(options) != count) or len(options) < 2:
        wanted = count if count is not None else "at least 2"
        raise BadRecordError("bad_type", f"{field!r} must hold {wanted} options", field)
    return options


def _listings(options: list[str]) -> dict[str, str]:
    """The ways a phrasing lists the options."""
    ors = f"{', '.join(options[:-1])} or {options[-1]}"
    return {
        "bullets": "\n".join(f"- {o}" for o in options),
        "commas": ", ".join(options),
        "slashes": " / ".join(options),
        "ors": ors,
    }


def _label_index(record: dict[str, Any], names: list[str], *, fold_case: bool = False) -> int:
    """The index of the record's label: an int index, or one of ``names``."""
    label = record.get("label")
    if label is None or (isinstance(label, str) and not label.strip()):
        raise BadRecordError("missing_field", "missing or empty field 'label'", "label")
    if isinstance(label, int) and not isinstance(label, bool):
        if 0 <= label < len(names):
            return label
        raise BadRecordError(
            "bad_type", f"label {label} is no index of the {len(names)} options", "label"
        )
    if isinstance(label, str):
        given = [n.casefold() for n in names] if fold_case else names
        wanted = label.strip().casefold() if fold_case else label.strip()
        if wanted in given:
            return given.index(wanted)
    raise BadRecordError(
        "bad_type",
        f"label {label!r} is not one of the options ({', '.join(names)}) nor an index of one "
        f"(0 to {len(names) - 1})",
        "label",
    )


def classification(
    record: dict[str, Any], phrasing: int, choices: list[str] | None = None
) -> tuple[str, str]:
    """Pick one of the options for a text.

    Args:
        record: ``text``, ``label`` (an option or its index), ``question`` (optional) and
            ``options`` (optional when ``choices`` is given).
        phrasing: which phrasing, ``0 <= phrasing < 5``.
        choices: the options for every record (datasets whose labels are numbers); given, it
            replaces the record's ``options``.

    Returns:
        The instruction, listing every option, and the label's option as the answer.
    """
    template = _template(CLASSIFICATION, phrasing, "classification")
    text = _text(record, "text")
    question = _text(record, "question", required=False) or DEFAULT_QUESTION
    if choices is None:
        options = _option_list(record.get("options"), "options")
    else:
        options = _option_list(choices, "choices")
    answer = options[_label_index(record, options)]
    instruction = template.format(text=text, question=question, **_listings(options))
    return instruction.rstrip(), answer


def extraction(record: dict[str, Any], phrasing: int) -> tuple[str, str]:
    """Pull ``target`` (e.g. "the number of the room") out of ``text``; ``answer`` answers."""
    template = _template(EXTRACTION, phrasing, "extraction")
    fields = {key: _text(record, key) for key in ("text", "target")}
    return template.format(**fields).rstrip(), _text(record, "answer")


def translation(record: dict[str, Any], phrasing: int) -> tuple[str, str]:
    """Translate ``source`` from ``source_language`` to ``target_language``; ``target``
    answers."""
    template = _template(TRANSLATION, phrasing, "translation")
    fields = {key: _text(record, key) for key in ("source", "source_language", "target_language")}
    return template.format(**fields).rstrip(), _text(record, "target")


def summarization(record: dict[str, Any], phrasing: int) -> tuple[str, str]:
    """Summarize ``document``; ``summary`` answers."""
    template = _template(SUMMARIZATION, phrasing, "summarization")
    return template.format(document=_text(record, "document")).rstrip(), _text(record, "summary")


def qa(record: dict[str, Any], phrasing: int) -> tuple[str, str]:
    """Answer ``question``, from ``context`` where the record has one; ``answer`` answers."""
    with_context, without = _template(QA, phrasing, "qa")
    question, context = _text(record, "question"), _text(record, "context", required=False)
    template = with_context if context else without
    return template.format(question=question, context=context).rstrip(), _text(record, "answer")


def nli(record: dict[str, Any], phrasing: int, answers: list[str] | None = None) -> tuple[str, str]:
    """Whether ``premise`` entails ``hypothesis``.

    Args:
        record: ``premise``, ``hypothesis`` and ``label``: ``entailment``, ``neutral`` or
            ``contradiction``, or its index 0, 1 or 2 (MNLI's order).
        phrasing: which phrasing, ``0 <= phrasing < 5``.
        answers: the three answers for the three labels, in that order (default: ``yes``,
            ``it is not possible to tell``, ``no``, as FLAN's templates answer).

    Returns:
        The instruction, listing the three answers, and the label's answer.
    """
    template = _template(NLI, phrasing, "nli")
    premise, hypothesis = _text(record, "premise"), _text(record, "hypothesis")
    options = list(NLI_ANSWERS) if answers is None else _option_list(answers, "answers", 3)
    answer = options[_label_index(record, list(NLI_LABELS), fold_case=True)]
    instruction = template.format(premise=premise, hypothesis=hypothesis, **_listings(options))
    return instruction.rstrip(), answer


@hookimpl
def register_task_formatters() -> list[TaskFormatter]:
    return [
        TaskFormatter(
            "classification",
            ("text", "label"),
            len(CLASSIFICATION),
            classification,
            "pick one of the listed options for a text",
        ),
        TaskFormatter(
            "extraction",
            ("text", "target", "answer"),
            len(EXTRACTION),
            extraction,
            "pull a named piece out of a text",
        ),
        TaskFormatter(
            "translation",
            ("source", "source_language", "target_language", "target"),
            len(TRANSLATION),
            translation,
            "translate a text between two languages",
        ),
        TaskFormatter(
            "summarization",
            ("document", "summary"),
            len(SUMMARIZATION),
            summarization,
            "a short summary of a document",
        ),
        TaskFormatter(
            "qa",
            ("question", "answer"),
            len(QA),
            qa,
            "answer a question, from a context where there is one",
        ),
        TaskFormatter(
            "nli",
            ("premise", "hypothesis", "label"),
            len(NLI),
            nli,
            "whether a premise entails a hypothesis (yes / not possible to tell / no)",
        ),
    ]
