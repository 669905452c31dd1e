"""``tempering serve`` answered through the real ``openai`` client, and the ``openai`` backend:
same answers as the model in process, OpenAI-style errors, retries, the API key kept secret."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest

from tempering.chat.encoding import ConversationEncoder
from tempering.generate import Completion, GenerationParams, HFGenerator
from tempering.generate.openai_backend import OpenAIGenerator
from tempering.generate.server import create_app, load_generator
from tests.conftest import REGISTRY, TINY, lively_tiny_model

uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
fastapi = pytest.importorskip("fastapi")
Request = fastapi.Request  # module level: FastAPI resolves the endpoint's annotation here

PROMPTS = [[{"role": "user", "content": "Reverse: ka lo mi"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "12 + 30?"}]]


@contextmanager
def serving(app):
    """``app`` on 127.0.0.1 at a free port, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def local(tiny_tokenizer_module):
    model = lively_tiny_model()
    encoder = ConversationEncoder(tiny_tokenizer_module, chat_template="chatml",
                                  registry=REGISTRY)
    return HFGenerator(model, tiny_tokenizer_module, encoder, stop_ids=[], progress=None)


@pytest.fixture(scope="module")
def tiny_tokenizer_module():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def url(local):
    with serving(create_app(local, "tiny")) as base:
        yield base


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_openai_backend_against_tempering_serve_answers_as_the_local_model(url,
                                                                              local) -> None:
    remote = OpenAIGenerator("tiny", url, api_key_env=None)
    greedy = GenerationParams(n=2, max_new_tokens=10)
    assert [[c.text for c in cs] for cs in remote.generate(PROMPTS, greedy)] == \
        [[c.text for c in cs] for cs in local.generate(PROMPTS, greedy)]
    sampled = GenerationParams(n=3, max_new_tokens=6, temperature=1.2, seed=5)
    first = remote.generate(PROMPTS, sampled)
    assert first == remote.generate(PROMPTS, sampled) and [len(c) for c in first] == [3, 3]
    assert all(c.finish_reason == "length" and c.num_tokens == 6 for cs in first for c in cs)
    ids = [m.id for m in openai.OpenAI(api_key="x", base_url=url).models.list().data]
    assert ids == ["tiny"]


def test_stop_strings_reach_the_server(url, local) -> None:
    [[plain]] = local.generate(PROMPTS[:1], GenerationParams(max_new_tokens=8))
    word = plain.text.split()[1]
    [[cut]] = OpenAIGenerator("tiny", url, api_key_env=None).generate(
        PROMPTS[:1], GenerationParams(max_new_tokens=8, stop=(word,)))
    assert cut.finish_reason == "stop" and cut.text == plain.text[:plain.text.find(word)]


@pytest.mark.parametrize(("change", "status", "param"), [
    ({"n": 0}, 400, "n"),
    ({"temperature": -1}, 400, "temperature"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ({"stream": True}, 400, "stream"),
    ({"model": "gpt-9"}, 404, "model"),
])
def test_a_bad_request_is_an_openai_style_error(url, change, status, param) -> None:
    body = {"model": "tiny", "messages": PROMPTS[0], "max_tokens": 2, **change}
    code, answer = _post(url, body)
    assert code == status and set(answer) == {"error"}, answer
    assert answer["error"]["param"] == param and answer["error"]["message"]
    assert "Traceback" not in json.dumps(answer)


def test_the_real_client_raises_its_own_errors(url) -> None:
    client = openai.OpenAI(api_key="x", base_url=url, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="n"):
        client.chat.completions.create(model="tiny", messages=PROMPTS[0], n=0)
    with pytest.raises(openai.NotFoundError, match="gpt-9"):
        client.chat.completions.create(model="gpt-9", messages=PROMPTS[0])


def _flaky_app(seen: list[dict]):
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        seen.append(dict(request.headers))
        if len(seen) <= 2:  # busy twice, then fine
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429,
                                headers={"retry-after-ms": "10"})
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}

    return app


def test_busy_endpoints_are_retried_and_the_key_stays_secret(monkeypatch, caplog) -> None:
    monkeypatch.setenv("MY_SECRET_KEY", "sk-do-not-leak-123")
    seen: list[dict] = []
    with serving(_flaky_app(seen)) as base:
        remote = OpenAIGenerator("m", base, api_key_env="MY_SECRET_KEY", max_retries=3)
        assert remote.generate(PROMPTS[:1], GenerationParams()) == [[Completion("ok", 2,
                                                                                "stop")]]
    assert len(seen) == 3 and all(h["authorization"] == "Bearer sk-do-not-leak-123"
                                  for h in seen)
    assert "sk-do-not-leak" not in repr(remote) + str(vars(remote)) + caplog.text
    monkeypatch.delenv("MY_SECRET_KEY")
    with pytest.raises(ValueError, match="^the API key variable MY_SECRET_KEY is not set$"):
        OpenAIGenerator("m", base, api_key_env="MY_SECRET_KEY")


def test_serve_loads_a_saved_run_model(tmp_path, local) -> None:
    local.model.save_pretrained(tmp_path / "final")
    tok = local.tokenizer
    tok.chat_template = local.encoder.template.jinja
    tok.save_pretrained(tmp_path / "final")
    (tmp_path / "final" / "chat_template_kwargs.json").write_text("{}")
    generator, count = load_generator(tmp_path / "final")
    params = GenerationParams(max_new_tokens=6)
    assert [c[0].text for c in generator.generate(PROMPTS, params)] == \
        [c[0].text for c in local.generate(PROMPTS, params)]
    assert count(PROMPTS[0]) > 5


def test_a_generate_stage_with_the_openai_backend_against_tempering_serve(url, local,
                                                                          tiny_recipe,
                                                                          tmp_path) -> None:
    """The whole stage through the real client: the served model's greedy answers, in prompt
    order, with the backend named in each record's provenance."""
    from tempering.pipeline import run_pipeline
    from tempering.pipeline.samples import read_samples
    from tempering.recipe import load_recipe

    recipe = {**tiny_recipe, "stages": [{"kind": "generate"}],
              "generate": {"prompts": tiny_recipe["data"]["validation"], "max_prompts": 5,
                           "chunk_size": 2, "sampling": {"n": 2, "temperature": 0.0,
                                                         "max_new_tokens": 8},
                           "generator": {"name": "openai", "options": {
                               "model": "tiny", "base_url": url, "api_key_env": None}}}}
    run_pipeline(load_recipe(recipe))
    samples = read_samples(tmp_path / "run" / "round-1" / "0-generate" / "samples.jsonl")
    assert len(samples) == 10 and {s["generator"] for s in samples} == {"openai"}
    prompts = [s["messages"][:-1] for s in samples[::2]]
    want = local.generate(prompts, GenerationParams(n=2, max_new_tokens=8))
    assert [s["text"] for s in samples] == [c.text for answers in want for c in answers]
    assert all(s["num_tokens"] > 0 and s["finish_reason"] in ("stop", "length")
               for s in samples)


def test_the_self_instruct_loop_and_evolve_through_the_openai_backend_against_serve(
        url, local, tiny_recipe, shared_data, tmp_path) -> None:
    """Self-Instruct and Evol-Instruct stages with a hosted generator: step 0's candidates are
    exactly what the served model answers to step 0's prompts, parsed; every candidate is kept
    or rejected with a reason."""
    import random

    from tempering.pipeline import run_pipeline
    from tempering.pipeline.generate import chunk_seed
    from tempering.pipeline.growth import parse_instructions, read_tasks
    from tempering.pipeline.samples import read_samples
    from tempering.pipeline.self_instruct import _prompts
    from tempering.recipe import DataSource, load_recipe

    seeds = [{"path": str(shared_data / "alpaca_seed_tasks.jsonl")}]
    recipe = {**tiny_recipe, "stages": [{"kind": "self_instruct"}, {"kind": "evolve"}],
              "generate": {"sampling": {"n": 1, "temperature": 0.0, "max_new_tokens": 24},
                           "generator": {"name": "openai", "options": {
                               "model": "tiny", "base_url": url, "api_key_env": None}}},
              "self_instruct": {"seeds": seeds, "num_instructions": 50, "max_steps": 2,
                                "prompts_per_step": 2},
              "evolve": {"seeds": [{**seeds[0], "max_records": 3}], "rounds": 2}}
    view = load_recipe(recipe)
    run_pipeline(view)
    base = tmp_path / "run" / "round-1"
    folder = base / "0-self_instruct"
    records = read_samples(folder / "samples.jsonl") + read_samples(folder / "rejects.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["candidates"] == len(records)
    assert all(r["accepted"] or r["filter_reason"] for r in records)
    tasks = read_tasks([DataSource(**s) for s in seeds], "seeds")
    prompts = _prompts(view, tasks, [], random.Random(chunk_seed(view, 1, 0)))
    answers = local.generate([[{"role": "user", "content": p}] for p, _ in prompts],
                             GenerationParams(n=1, max_new_tokens=24))
    want = []
    for a in answers:
        parsed = parse_instructions(a[0].text, a[0].finish_reason == "length")
        want += parsed.items + [r["text"] for r in parsed.rejects]
    got = [r["text"] for r in records if r["step"] == 0]
    assert sorted(got) == sorted(want) and got
    evolve = json.loads((base / "1-evolve" / "summary.json").read_text())
    assert evolve["candidates"] == 3 * 2 == evolve["kept"] + evolve["rejected"]


def _named_app(name: str, seen: list[str]):
    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body["messages"][-1]["content"])
        return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": name}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens once closed


def test_a_fleet_of_endpoints_shares_the_prompts_and_covers_for_one_that_is_down() -> None:
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    seen: dict[str, list[str]] = {"a": [], "b": []}
    with serving(_named_app("a", seen["a"])) as a, serving(_named_app("b", seen["b"])) as b:
        fleet = OpenAIGenerator("m", [a, b], api_key_env=None, max_retries=0)
        answers = [c[0].text for c in fleet.generate(prompts, GenerationParams())]
        assert answers == ["a", "b"] * 3  # prompt i at endpoint i mod 2
        assert sorted(seen["a"]) == ["q0", "q2", "q4"] and sorted(seen["b"]) == ["q1", "q3", "q5"]
        down = _closed_port()
        fleet = OpenAIGenerator("m", [a, down], api_key_env=None, max_retries=0)
        assert [c[0].text for c in fleet.generate(prompts, GenerationParams())] == ["a"] * 6
    with pytest.raises(openai.APIConnectionError):
        OpenAIGenerator("m", [down], api_key_env=None, max_retries=0).generate(
            prompts[:1], GenerationParams())
    with pytest.raises(ValueError, match="an empty list of endpoints"):
        OpenAIGenerator("m", [], api_key_env=None)
