"""Chunked projection at supervised positions equals the full-logits cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tempering.chat.encoding import IGNORE_INDEX
from tempering.train.losses import chunked_per_token, project_logits, supervised_loss
from tests.conftest import TINY


class _Module:
    def __init__(self, model, chunk):
        from tempering import Objective
        from tempering.plugins.objectives import cross_entropy

        self.model = model
        self.objective = Objective("cross_entropy", cross_entropy)
        self.objective_options = {}
        self.loss_chunk_size = chunk


@pytest.fixture()
def model():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).float()


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 40), generator=g)
    labels = ids.clone()
    labels[:, :10] = IGNORE_INDEX  # prompt
    labels[1, 25:] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[2, 30:] = 0  # padding
    labels[2, 30:] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _reference(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False).logits  # [b, s, v]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")


@pytest.mark.parametrize("chunk", [1, 7, 64, 0])
def test_chunked_loss_and_gradients_match_full_logits(model, chunk):
    batch = _batch(model.config.vocab_size)
    ref = _reference(model, batch)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = supervised_loss(_Module(model, chunk), batch)
    out.loss_sum.backward()
    assert out.num_tokens == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(out.loss_sum, ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        # fp32 summation order differs between one big and several small matmuls
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=2e-5, msg=n)


def test_chunking_never_projects_more_than_a_chunk(model):
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    hidden = torch.randn(50, model.config.hidden_size, requires_grad=True)
    targets = torch.randint(0, model.config.vocab_size, (50,))
    loss = chunked_per_token(model, _Module(model, 16).objective, hidden, targets,
                             chunk_size=16).sum()
    loss.backward()
    handle.remove()
    assert max(seen) <= 16 and sum(seen[:4]) == 50  # 4 forward chunks (+ recomputation)


def test_logit_softcapping_is_applied(model):
    hidden = torch.randn(4, model.config.hidden_size)
    plain = project_logits(model, hidden)
    model.config.final_logit_softcapping = 2.0
    capped = project_logits(model, hidden)
    torch.testing.assert_close(capped, torch.tanh(plain / 2.0) * 2.0)
    assert capped.abs().max() < 2.0
