"""A test plugin: a backend that asks for a process of its own and answers with its pid."""

from __future__ import annotations

import os

from tempering import Completion, GeneratorBackend, hookimpl


class _PidGenerator:
    def generate(self, prompts, params):
        return [[Completion(str(os.getpid()), 1, "stop") for _ in range(params.n)]
                for _ in prompts]


@hookimpl
def register_generators():
    return [GeneratorBackend("pid_echo", lambda context: _PidGenerator(), in_process=False,
                             own_process=True)]
