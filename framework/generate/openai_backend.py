"""A :class:`~tempering.generate.Generator` over any OpenAI-compatible chat completions endpoint
(a vLLM server, ``tempering serve``, a hosted API), through the official ``openai`` client.

The API key is read from the environment variable the recipe names, handed to the client and
kept nowhere else: not in this object's attributes, its repr, logs or files. The client retries
429, 5xx and connection errors with exponential backoff (``max_retries``) and gives each request
``timeout`` seconds; at most ``concurrency`` requests are in flight.

A fleet: ``base_url`` may list several endpoints serving the same model (vLLM servers on
several machines, ``tempering serve`` on each GPU). Prompt i goes to endpoint i mod k, so the
load is spread evenly and a rerun sends each prompt where it went before; a request whose
endpoint cannot be reached (after the client's retries) goes to the next endpoint, and only
when none answers is it an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tempering.generate.base import Completion, GenerationParams

__all__ = ["OpenAIGenerator"]


class OpenAIGenerator:
    """Chat completions from ``model`` at ``base_url``.

    Args:
        model: the model id the endpoint serves.
        base_url: the endpoint (``http://127.0.0.1:8000/v1``), or a list of endpoints serving
            the same model (a fleet); None: the client's default.
        api_key_env: the environment variable that holds the API key; None for an endpoint
            that needs none. A named variable that is not set is an error naming it.
        concurrency: requests in flight at once.
        max_retries: retries of a request on 429, 5xx and connection errors, with backoff.
        timeout: seconds per request.
        count_tokens: ``text -> int`` for a completion's token count when the endpoint does
            not give one per completion (``usage`` counts all ``n`` together); None: the
            endpoint's count is split evenly.
    """

    def __init__(self, model: str, base_url: str | Sequence[str] | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY", *, concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 120.0, count_tokens: Any = None) -> None:
        import openai

        key = "unused"
        if api_key_env is not None:
            if not os.environ.get(api_key_env):
                raise ValueError(f"the API key variable {api_key_env} is not set")
            key = os.environ[api_key_env]
        self.model, self.concurrency, self.count_tokens = model, concurrency, count_tokens
        urls = [base_url] if base_url is None or isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: an empty list of endpoints")
        self._clients = [openai.OpenAI(api_key=key, base_url=url, max_retries=max_retries,
                                       timeout=timeout) for url in urls]
        self._unreachable = openai.APIConnectionError

    def __repr__(self) -> str:
        urls = [str(c.base_url) for c in self._clients]
        where = repr(urls[0] if len(urls) == 1 else urls)
        return f"OpenAIGenerator(model={self.model!r}, base_url={where})"

    def generate(self, prompts: Sequence[list[dict[str, Any]]],
                 params: GenerationParams) -> list[list[Completion]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda i, m: self._spread(i, m, params),
                                 range(len(prompts)), prompts))

    def _spread(self, i: int, messages: list[dict[str, Any]],
                params: GenerationParams) -> list[Completion]:
        """Prompt ``i`` at endpoint i mod k; on to the next one while an endpoint is
        unreachable."""
        k = len(self._clients)
        for attempt in range(k):
            try:
                return self._one(self._clients[(i + attempt) % k], messages, params)
            except self._unreachable:
                if attempt == k - 1:
                    raise
        raise AssertionError("unreachable")

    def _one(self, client: Any, messages: list[dict[str, Any]],
             params: GenerationParams) -> list[Completion]:
        extra: dict[str, Any] = {"top_k": params.top_k} if params.top_k else {}
        response = client.chat.completions.create(
            model=self.model, messages=[_wire(m) for m in messages],  # type: ignore[misc]
            n=params.n,
            temperature=params.temperature, top_p=params.top_p,
            max_completion_tokens=params.max_new_tokens, seed=params.seed,
            stop=list(params.stop) or None, extra_body=extra or None)
        choices = sorted(response.choices, key=lambda c: c.index)
        total = response.usage.completion_tokens if response.usage else 0
        out = []
        for choice in choices:
            text = choice.message.content or ""
            reason = "length" if choice.finish_reason == "length" else "stop"
            if self.count_tokens is not None:
                tokens = self.count_tokens(text) + (reason == "stop")
            else:
                tokens = round(total / max(1, len(choices)))
            reasoning = getattr(choice.message, "reasoning_content", None)  # vLLM, DeepSeek
            out.append(Completion(text, tokens, reason,
                                  reasoning if isinstance(reasoning, str) else None))
        return out


_WIRE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")


def _wire(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the chat completions API takes it (no training flags)."""
    return {k: message[k] for k in _WIRE_FIELDS if message.get(k) is not None}
