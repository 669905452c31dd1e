"""The transformers backend: shared-prefix sampling equals plain generate, completions say how
they ended, and a prompt is prefilled once for its n completions."""

from __future__ import annotations

import pytest
import torch

from tempering.chat.encoding import ConversationEncoder
from tempering.generate import Completion, GenerationParams, HFGenerator
from tests.conftest import REGISTRY, lively_tiny_model

PROMPTS = [[{"role": "user", "content": "Reverse: ka lo mi"}],
           [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Add 12 and 30, then say the result twice."}],
           [{"role": "user", "content": "hi"}]]


@pytest.fixture(scope="module")
def model():
    return lively_tiny_model()


@pytest.fixture()
def encoder(tiny_tokenizer):
    return ConversationEncoder(tiny_tokenizer, chat_template="chatml", registry=REGISTRY)


def _plain(model, tok, encoder, messages, max_new_tokens):
    text = encoder.render(messages, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                         eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


def test_batched_shared_prefix_greedy_equals_plain_generate_per_prompt(model, tiny_tokenizer,
                                                                      encoder) -> None:
    gen = HFGenerator(model, tiny_tokenizer, encoder, stop_ids=[], progress=None)
    got = gen.generate(PROMPTS, GenerationParams(n=2, max_new_tokens=12))
    assert [len(c) for c in got] == [2, 2, 2]
    for messages, completions in zip(PROMPTS, got, strict=True):
        expected = tiny_tokenizer.decode(_plain(model, tiny_tokenizer, encoder, messages, 12),
                                         skip_special_tokens=True)
        assert [c.text for c in completions] == [expected, expected]
        assert all(c == Completion(expected, 12, "length") for c in completions)
    assert len({c[0].text for c in got}) == 3  # the prompts are answered differently


def test_sampling_is_reproducible_by_seed_and_the_n_samples_differ(model, tiny_tokenizer,
                                                                   encoder) -> None:
    gen = HFGenerator(model, tiny_tokenizer, encoder, stop_ids=[], batch_size=2, progress=None)
    params = GenerationParams(n=6, max_new_tokens=8, temperature=1.5, top_k=40, seed=7)
    first, again = gen.generate(PROMPTS, params), gen.generate(PROMPTS, params)
    assert first == again and [len(c) for c in first] == [6, 6, 6]
    assert all(len({c.text for c in completions}) > 1 for completions in first)
    other = gen.generate(PROMPTS, GenerationParams(**{**params.__dict__, "seed": 8}))
    assert other != first
    state = torch.random.get_rng_state()
    gen.generate(PROMPTS[:1], params)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched


def test_a_completion_says_how_it_ended(model, tiny_tokenizer, encoder) -> None:
    first = _plain(model, tiny_tokenizer, encoder, PROMPTS[1], 6)
    stop = first[3]  # the fourth greedy token ends the answer
    gen = HFGenerator(model, tiny_tokenizer, encoder, stop_ids=[stop], progress=None)
    [[ended]] = gen.generate(PROMPTS[1:2], GenerationParams(max_new_tokens=6))
    assert ended == Completion(tiny_tokenizer.decode(first[:first.index(stop)],
                                                     skip_special_tokens=True),
                               first.index(stop) + 1, "stop")
    text = tiny_tokenizer.decode(first, skip_special_tokens=True)
    word = text.split()[1] if len(text.split()) > 1 else text[-2:]
    free = HFGenerator(model, tiny_tokenizer, encoder, stop_ids=[], progress=None)
    [[cut]] = free.generate(PROMPTS[1:2], GenerationParams(max_new_tokens=6, stop=(word,)))
    assert cut.finish_reason == "stop" and cut.text == text[:text.find(word)]
    assert word not in cut.text and cut.num_tokens <= 6


def test_a_prompt_is_prefilled_once_for_its_n_completions(model, tiny_tokenizer,
                                                          encoder) -> None:
    seen: list[tuple[int, int]] = []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    gen = HFGenerator(model, tiny_tokenizer, encoder, stop_ids=[], progress=None)
    gen.generate(PROMPTS, GenerationParams(n=8, max_new_tokens=4, temperature=1.0, seed=0))
    handle.remove()
    rows, width = seen[0]
    assert rows == len(PROMPTS) and width > 8  # the prompts, once each
    assert all(shape == (len(PROMPTS) * 8, 1) for shape in seen[1:])  # then one token a step
