"""Built-in scorers of generated samples: verifiers for tasks with a known answer
(``exact_match``, ``regex_answer``), generated code run against tests (``python_tests``, in a
sandbox) and a learned ``reward_model``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tempering import Scorer, hookimpl

__all__ = ["register_scorers"]

Prompts = Sequence[list[dict[str, Any]]]


def _normal(text: str, ignore_case: bool) -> str:
    text = " ".join(text.split())
    return text.lower() if ignore_case else text


def exact_match(prompts: Prompts, completions: Sequence[str],
                references: Sequence[str | None], ignore_case: bool = False) -> list[float]:
    """1.0 when the completion is the reference (whitespace runs collapsed), else 0.0; a
    prompt without a reference scores 0.0."""
    return [float(r is not None and _normal(c, ignore_case) == _normal(r, ignore_case))
            for c, r in zip(completions, references, strict=True)]


_LAST_NUMBER = r"(-?\d[\d,]*(?:\.\d+)?)(?!.*\d)"


def _extract(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    if match is None:
        return None
    return (match.group(1) if pattern.groups else match.group(0)).strip()


def _same(a: str, b: str) -> bool:
    try:
        return float(a.replace(",", "")) == float(b.replace(",", ""))
    except ValueError:
        return a == b


def regex_answer(prompts: Prompts, completions: Sequence[str],
                 references: Sequence[str | None], pattern: str = _LAST_NUMBER,
                 reference_pattern: str | None = None) -> list[float]:
    """1.0 when the answer ``pattern`` finds in the completion (its first group, or the whole
    match) equals the one ``reference_pattern`` (default: ``pattern``) finds in the reference,
    numerically where both are numbers; the default pattern takes the last number (GSM8K's
    ``#### 42`` style). A reference the pattern does not match is compared whole."""
    answer = re.compile(pattern, re.DOTALL)
    expected = re.compile(reference_pattern or pattern, re.DOTALL)
    out = []
    for completion, reference in zip(completions, references, strict=True):
        got = _extract(answer, completion)
        want = None if reference is None else (_extract(expected, reference) or reference.strip())
        out.append(float(got is not None and want is not None and _same(got, want)))
    return out


_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)


def _code(completion: str) -> str:
    """The first fenced code block of a completion, or all of it."""
    match = _FENCE.search(completion)
    return match.group(1) if match else completion


def python_tests(prompts: Prompts, completions: Sequence[str],
                 references: Sequence[str | None], cpu_seconds: float = 5.0,
                 wall_seconds: float = 10.0, memory_mb: int = 512, workers: int = 2,
                 require_namespaces: bool = True, interpreter: str = "") -> list[float]:
    """1.0 when the completion's code (its first fenced block, or all of it) and then the
    reference (test code: asserts) both run to the end in the sandbox (``docs/sandbox.md``)
    within the limits; a failure, a timeout, an early exit or a contained escape attempt is
    0.0, and so is a prompt without tests."""
    from tempering import SandboxLimits, run_python_tests

    limits = SandboxLimits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds,
                           memory_mb=memory_mb, require_namespaces=require_namespaces,
                           interpreter=interpreter)

    def one(pair: tuple[str, str | None]) -> float:
        completion, tests = pair
        if tests is None:
            return 0.0
        return float(run_python_tests(_code(completion), tests, limits).passed)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, zip(completions, references, strict=True)))


_REWARD_MODELS: dict[tuple[Any, ...], Any] = {}


def reward_model(prompts: Prompts, completions: Sequence[str],
                 references: Sequence[str | None], model: str = "", batch_size: int = 8,
                 max_length: int = 2048, dtype: str = "auto",
                 chat_template: str | None = None) -> list[float]:
    """The score an ``AutoModelForSequenceClassification`` gives each (prompt, completion),
    formatted with the reward model's own chat template; loaded once per process."""
    from tempering import RewardModel

    if not model:
        raise ValueError("reward_model needs the option `model` (a local folder or hub id)")
    key = (model, batch_size, max_length, dtype, chat_template)
    if key not in _REWARD_MODELS:
        _REWARD_MODELS[key] = RewardModel(model, batch_size=batch_size, max_length=max_length,
                                          dtype=dtype, chat_template=chat_template)
    return _REWARD_MODELS[key].score(prompts, completions)


@hookimpl
def register_scorers() -> list[Scorer]:
    return [
        Scorer("exact_match", exact_match, "completion == reference (whitespace collapsed)"),
        Scorer("regex_answer", regex_answer, "the answer a regex extracts == the reference's "
               "(default: the last number)"),
        Scorer("python_tests", python_tests, "generated code passes the reference's tests in a "
               "sandbox"),
        Scorer("reward_model", reward_model, "a sequence-classification reward model, with its "
               "own chat template", own_process=True),
    ]
