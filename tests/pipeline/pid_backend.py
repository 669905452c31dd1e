"""A test plugin: a backend and a scorer that ask for a process of their own and answer with
their pid."""

from __future__ import annotations

import os

from tempering import Completion, GeneratorBackend, Scorer, hookimpl


class _PidGenerator:
    def generate(self, prompts, params):
        return [[Completion(str(os.getpid()), 1, "stop") for _ in range(params.n)]
                for _ in prompts]


@hookimpl
def register_generators():
    return [GeneratorBackend("pid_echo", lambda context: _PidGenerator(), in_process=False,
                             own_process=True)]


def _refuse(prompts, completions, references, threshold=0.0):
    raise ValueError(f"pid_refuse: threshold {threshold} is not allowed")


@hookimpl
def register_scorers():
    return [Scorer("pid_score", lambda prompts, completions, references: [float(os.getpid())]
                   * len(completions), own_process=True),
            Scorer("pid_refuse", _refuse, own_process=True)]
