"""``tempering serve``: an OpenAI-compatible chat completions server over a :class:`Generator`.

Routes: ``GET /v1/models`` and ``POST /v1/chat/completions`` (``messages``, ``n``,
``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``stop``, ``seed``; no
streaming). A bad request gets an OpenAI-style JSON error with a 4xx status, never a traceback.
Requests are answered one at a time (one model in this process).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotation at runtime.

import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["create_app", "load_generator"]

_ROLES = ("system", "user", "assistant", "tool")


def _error(status: int, message: str, param: str | None = None,
           kind: str = "invalid_request_error", code: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={
        "error": {"message": message, "type": kind, "param": param, "code": code}})


def _schema() -> Any:
    from pydantic import BaseModel, ConfigDict, Field

    class Message(BaseModel):
        role: str
        content: str | list[dict[str, Any]] | None = None

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        messages: list[Message] = Field(min_length=1)
        n: int = Field(1, ge=1, le=128)
        temperature: float = Field(1.0, ge=0.0, le=2.0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        max_tokens: int | None = Field(None, ge=1)
        max_completion_tokens: int | None = Field(None, ge=1)
        stop: str | list[str] | None = None
        seed: int | None = None
        stream: bool = False

    return ChatRequest


def _text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = [p.get("text") for p in content if p.get("type") == "text"]
    if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"messages[{index}].content: only text parts are supported")
    return "".join(parts)


def create_app(generator: Any, model_name: str, *, default_max_tokens: int = 256,
               count_tokens: Any = None) -> Any:
    """The FastAPI app serving ``generator`` as model ``model_name``.

    Args:
        generator: a :class:`tempering.generate.Generator`.
        model_name: the id ``/v1/models`` lists and requests must name.
        default_max_tokens: the budget when a request gives none.
        count_tokens: ``text -> int`` for the usage's prompt tokens (None: not counted).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from tempering.generate.base import GenerationParams

    app = FastAPI(title="tempering", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()
    chat_request = _schema()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}", where or None)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Any:
        return _error(exc.status_code, str(exc.detail), code=str(exc.status_code))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Any:
        return _error(500, f"internal error: {type(exc).__name__}", kind="server_error")

    @app.get("/v1/models")
    def models() -> Any:
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": 0, "owned_by": "tempering"}]}

    @app.post("/v1/chat/completions")
    def chat(body: chat_request) -> Any:  # type: ignore[valid-type]
        return _answer(body)

    def _answer(body: Any) -> Any:
        if body.model != model_name:
            return _error(404, f"model {body.model!r} does not exist; this server has "
                          f"{model_name!r}", "model", code="model_not_found")
        if body.stream:
            return _error(400, "stream: streaming is not supported", "stream")
        try:
            messages = [{"role": m.role, "content": _text(m.content, i)}
                        for i, m in enumerate(body.messages)]
        except ValueError as exc:
            return _error(400, str(exc), "messages")
        bad = next((i for i, m in enumerate(messages) if m["role"] not in _ROLES), None)
        if bad is not None:
            return _error(400, f"messages[{bad}].role: {messages[bad]['role']!r} is not one of "
                          f"{', '.join(_ROLES)}", f"messages[{bad}].role")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = GenerationParams(
            n=body.n, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop,
            max_new_tokens=body.max_completion_tokens or body.max_tokens or default_max_tokens)
        with lock:
            [completions] = generator.generate([messages], params)
        used = sum(c.num_tokens for c in completions)
        prompt = count_tokens(messages) if count_tokens else 0
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": model_name,
                "choices": [{"index": i, "finish_reason": c.finish_reason,
                             "message": {"role": "assistant", "content": c.text}}
                            for i, c in enumerate(completions)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": used,
                          "total_tokens": prompt + used}}

    return app


def load_generator(model_dir: str | Path) -> tuple[Any, Any]:
    """An :class:`HFGenerator` over a saved model directory (``tempering run``'s ``final/``:
    weights, tokenizer with its chat template, ``chat_template_kwargs.json``), and a prompt
    token counter."""
    import json

    from tempering.chat.encoding import ConversationEncoder
    from tempering.generate.hf import HFGenerator, stop_token_ids
    from tempering.models import load_causal_lm, load_fast_tokenizer
    from tempering.plugin_manager import build_plugin_manager, build_registry
    from tempering.recipe import ModelConfig

    path = Path(model_dir)
    cfg = ModelConfig(name_or_path=str(path), init="pretrained", dtype="auto")
    tokenizer = load_fast_tokenizer(cfg)
    kwargs_file = path / "chat_template_kwargs.json"
    kwargs = json.loads(kwargs_file.read_text()) if kwargs_file.exists() else {}
    registry = build_registry(build_plugin_manager(entry_points=False))
    encoder = ConversationEncoder(tokenizer, chat_template="tokenizer", registry=registry,
                                  template_kwargs=kwargs)
    model = load_causal_lm(cfg, seed=0).eval()
    sample = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    generator = HFGenerator(model, tokenizer, encoder, stop_token_ids(tokenizer, model, encoder,
                                                                      sample), progress=None)

    def count(messages: list[dict[str, Any]]) -> int:
        text = encoder.render(messages, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return generator, count
