"""The vLLM backend, against a fake engine (no vLLM needed): token prompts, the sampling
parameters, n completions per prompt in order, how completions ended; and, where vLLM and a
CUDA device are, greedy parity with the transformers backend."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from tempering.chat.encoding import ConversationEncoder
from tempering.generate import Completion, GenerationParams, HFGenerator
from tempering.generate.vllm_backend import VLLMGenerator
from tests.conftest import REGISTRY, lively_tiny_model

PROMPTS = [[{"role": "user", "content": "Reverse: ka lo mi"}],
           [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Add 12 and 30, then say the result twice."}],
           [{"role": "user", "content": "hi"}]]


@dataclass
class FakeSamplingParams:
    """The fields of ``vllm.SamplingParams`` the backend sets (anything else is a TypeError)."""

    n: int
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    seed: int | None
    stop: list[str]
    stop_token_ids: list[int]
    skip_special_tokens: bool


@dataclass
class FakeLLM:
    """Records ``generate`` calls; answers prompt ``i``'s completion ``k`` with ``answer(i, k)``
    (token ids, finish reason), its completions listed in reverse index order."""

    tokenizer: Any
    answer: Any
    calls: list[tuple[list[dict[str, Any]], Any, dict[str, Any]]] = field(default_factory=list)

    def generate(self, prompts, sampling_params, **kwargs):
        self.calls.append((prompts, sampling_params, kwargs))
        outputs = []
        for i, _ in enumerate(prompts):
            completions = []
            for k in reversed(range(sampling_params.n)):
                tokens, reason = self.answer(i, k)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                completions.append(SimpleNamespace(index=k, text=text, token_ids=tuple(tokens),
                                                   finish_reason=reason))
            outputs.append(SimpleNamespace(outputs=completions))
        return outputs


@pytest.fixture()
def encoder(tiny_tokenizer):
    return ConversationEncoder(tiny_tokenizer, chat_template="chatml", registry=REGISTRY)


def _words(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _generator(tok, encoder, answer, stop_ids=(4,)) -> tuple[VLLMGenerator, FakeLLM]:
    llm = FakeLLM(tok, answer)
    gen = VLLMGenerator("unused", tok, encoder, list(stop_ids), llm=llm,
                        sampling_params_cls=FakeSamplingParams, progress=False)
    return gen, llm


def test_prompts_are_the_templates_token_ids(tiny_tokenizer, encoder) -> None:
    gen, llm = _generator(tiny_tokenizer, encoder, lambda i, k: ([4], "stop"))
    gen.generate(PROMPTS, GenerationParams())
    [(prompts, _, kwargs)] = llm.calls
    expected = [_words(tiny_tokenizer, encoder.render(m, add_generation_prompt=True))
                for m in PROMPTS]
    assert prompts == [{"prompt_token_ids": ids} for ids in expected]
    assert all(isinstance(p["prompt_token_ids"], list) for p in prompts)
    assert kwargs == {"use_tqdm": False}
    assert tiny_tokenizer.decode(expected[0]).endswith("<|im_start|>assistant\n")


def test_sampling_parameters_map_one_to_one(tiny_tokenizer, encoder) -> None:
    gen, _ = _generator(tiny_tokenizer, encoder, None, stop_ids=[4, 7])
    sampled = gen.sampling_params(GenerationParams(n=3, max_new_tokens=20, temperature=0.7,
                                                   top_p=0.9, top_k=40, seed=5, stop=("END",)))
    assert sampled == FakeSamplingParams(n=3, temperature=0.7, top_p=0.9, top_k=40,
                                         max_tokens=20, seed=5, stop=["END"],
                                         stop_token_ids=[4, 7], skip_special_tokens=True)
    every = gen.sampling_params(GenerationParams(n=2, temperature=1.0))
    assert every.top_k == -1 and every.n == 2 and every.stop == []  # top_k 0 (all) is -1
    greedy = gen.sampling_params(GenerationParams(n=4, top_p=0.5, top_k=3))
    assert (greedy.n, greedy.temperature, greedy.top_p, greedy.top_k) == (1, 0.0, 1.0, -1)


def test_n_completions_per_prompt_in_order_with_how_they_ended(tiny_tokenizer, encoder) -> None:
    words = {(i, k): _words(tiny_tokenizer, f"answer {i} take {k}") for i in range(3)
             for k in range(2)}

    def answer(i, k):
        return (words[i, k] + [4], "stop") if k == 0 else (words[i, k], "length")

    gen, _ = _generator(tiny_tokenizer, encoder, answer)
    got = gen.generate(PROMPTS, GenerationParams(n=2, temperature=1.0, seed=1))
    assert got == [[Completion(f"answer {i} take 0", len(words[i, 0]) + 1, "stop"),
                    Completion(f"answer {i} take 1", len(words[i, 1]), "length")]
                   for i in range(3)]


def test_a_stop_token_that_is_not_special_leaves_no_text(tiny_tokenizer, encoder) -> None:
    [stop] = _words(tiny_tokenizer, "mi")[-1:]
    body = _words(tiny_tokenizer, "ka lo")
    gen, _ = _generator(tiny_tokenizer, encoder, lambda i, k: (body + [stop], "stop"),
                        stop_ids=[4, stop])
    [[done]] = gen.generate(PROMPTS[:1], GenerationParams())
    assert done == Completion(tiny_tokenizer.decode(body, skip_special_tokens=True),
                              len(body) + 1, "stop")


def test_greedy_asks_for_one_completion_and_repeats_it(tiny_tokenizer, encoder) -> None:
    gen, llm = _generator(tiny_tokenizer, encoder, lambda i, k: ([282, 92], "length"))
    got = gen.generate(PROMPTS[:2], GenerationParams(n=3, max_new_tokens=2))
    assert llm.calls[0][1].n == 1
    assert [len(c) for c in got] == [3, 3] and all(len(set(c)) == 1 for c in got)
    assert gen.generate([], GenerationParams()) == [] and len(llm.calls) == 1


def test_an_unknown_finish_reason_is_an_error(tiny_tokenizer, encoder) -> None:
    gen, _ = _generator(tiny_tokenizer, encoder, lambda i, k: ([282], "abort"))
    with pytest.raises(RuntimeError, match="finish_reason 'abort'"):
        gen.generate(PROMPTS[:1], GenerationParams())


def test_without_vllm_the_error_says_how_to_install_it(tiny_tokenizer, encoder,
                                                       monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'tempering\[vllm\]'") as info:
        VLLMGenerator("some/model", tiny_tokenizer, encoder, [4])
    assert "CUDA" in str(info.value) and "\n" not in str(info.value)
    gen, _ = _generator(tiny_tokenizer, encoder, None)
    gen._sampling_params_cls = None
    with pytest.raises(ImportError, match="vLLM is not installed"):
        gen.sampling_params(GenerationParams())


@pytest.mark.gpu
def test_greedy_vllm_equals_greedy_transformers(tmp_path) -> None:
    pytest.importorskip("vllm")
    import torch
    from transformers import AutoTokenizer

    from tempering.generate.hf import stop_token_ids

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = lively_tiny_model()
    model.save_pretrained(tmp_path)
    from tests.conftest import TINY

    AutoTokenizer.from_pretrained(TINY).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    encoder = ConversationEncoder(tok, chat_template="chatml", registry=REGISTRY)
    stops = stop_token_ids(tok, model, encoder, PROMPTS[0] + [{"role": "assistant",
                                                               "content": "x"}])
    params = GenerationParams(max_new_tokens=12)
    expected = HFGenerator(model, tok, encoder, stops, progress=None).generate(PROMPTS[:2], params)
    gen = VLLMGenerator(str(tmp_path), tok, encoder, stops, dtype="float32",
                        gpu_memory_utilization=0.2, max_model_len=512, progress=False,
                        engine_kwargs={"enforce_eager": True})
    assert gen.generate(PROMPTS[:2], params) == expected
