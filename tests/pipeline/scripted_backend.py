"""A test plugin: a generator that answers the Self-Instruct and Evol-Instruct prompts the way a
sloppy model would (numbered lists with repeats, blocked words and a truncated tail; instances
with a missing output; unclear judgements), deterministically from the prompt and the seed."""

from __future__ import annotations

import hashlib
import os
import random
import time

from tempering import Completion, GeneratorBackend, hookimpl

TOPICS = ["the ocean", "a city bus", "winter mornings", "prime numbers", "a lost key",
          "coffee", "the moon", "old maps", "a chess opening", "tax forms", "bees", "rain"]
VERBS = ["Write a short poem about", "Explain to a child", "List three facts about",
         "Summarize an article on", "Give advice about", "Describe the history of",
         "Classify the sentiment of a review about", "Draw a picture of"]


def _rng(prompt: str, seed: int | None) -> random.Random:
    digest = hashlib.sha256(f"{seed}|{prompt}".encode()).hexdigest()
    return random.Random(int(digest[:12], 16))


def _instructions(rng: random.Random) -> tuple[str, str]:
    lines = [f"{i}. {rng.choice(VERBS)} {rng.choice(TOPICS)}." for i in range(1, 6)]
    lines.insert(2, "3) " + lines[1][3:])  # a repeat, other numbering
    lines.append("7. Reply")  # too short
    lines.append("8. Explain why the sky looks")  # cut off
    return "Here are new tasks:\n" + "\n".join(lines), "length"


def _answer(prompt: str, rng: random.Random) -> tuple[str, str]:
    if "new tasks for an AI assistant" in prompt:
        return _instructions(rng)
    if "Classification:" in prompt:
        return rng.choice(["Yes", "No", "Maybe so"]), "stop"
    if "Class label:" in prompt:
        return "Example 1\nClass label: positive\nInput: I loved it.\nExample 2\nClass label: " \
               "negative\n", "stop"
    if "Example N" in prompt:
        return (f"Example 1\nInput: <none>\nOutput: {rng.choice(TOPICS)} is fine.\nExample 2\n"
                f"Input: {rng.choice(TOPICS)}\nExample 3\nInput: x\nOutput: y z"), "stop"
    if "#New Instruction#" in prompt:
        base = prompt.split("#Original Instruction#:\n", 1)[1].split("\n\n#New", 1)[0]
        longer = f"#New Instruction#: {base} Use exactly {rng.randint(2, 9)} sentences."
        return rng.choice([longer, longer, base, f"Rewrite the original instruction: {base}"]), \
            "stop"
    if "Instruction B:" in prompt:
        return rng.choice(["more", "same", "hmm"]), "stop"
    full = "The answer, in full: " + " ".join(rng.choice(TOPICS) for _ in range(6))
    return rng.choice(["Sorry, I cannot do that.", "ok.", full, full, full]), "stop"


class ScriptedGenerator:
    """``delay`` seconds per call; with ``fail_after`` and ``marker``, the call after that many
    raises once (then the marker file exists and it never fails again)."""

    def __init__(self, delay: float = 0.0, fail_after: int | None = None,
                 marker: str | None = None) -> None:
        self.delay, self.fail_after, self.marker, self.calls = delay, fail_after, marker, 0

    def generate(self, prompts, params):
        time.sleep(self.delay)
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after \
                and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError("scripted failure")
        out = []
        for messages in prompts:
            prompt = messages[-1]["content"]
            answers = []
            for k in range(params.n):
                text, reason = _answer(prompt, _rng(prompt, (params.seed or 0) + k))
                answers.append(Completion(text, len(text.split()), reason))
            out.append(answers)
        return out


@hookimpl
def register_generators():
    def build(context, delay=0.0, fail_after=None, marker=None):
        return ScriptedGenerator(delay, fail_after, marker)

    return [GeneratorBackend("scripted", build, in_process=False)]
