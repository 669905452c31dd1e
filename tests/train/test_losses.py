"""Chunked projection at supervised positions equals the full-logits cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tempering import Objective
from tempering.chat.encoding import IGNORE_INDEX
from tempering.plugins.loss import compute_loss
from tempering.plugins.objectives import cross_entropy
from tempering.train.losses import LossContext, chunked_per_token, project_logits
from tests.conftest import TINY

CE = Objective("cross_entropy", cross_entropy)


def _kl(student, labels, teacher, temperature=1.0):
    """KL(teacher || student) per token on temperature-softened distributions."""
    t = F.log_softmax(teacher.float() / temperature, -1)
    s = F.log_softmax(student.float() / temperature, -1)
    return (t.exp() * (t - s)).sum(-1) * temperature**2


KL = Objective("kl", _kl, needs_teacher=True)


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
    out = compute_loss(LossContext(model, CE, {}, chunk), batch)
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
    loss = chunked_per_token(model, CE.per_token, hidden, targets, chunk_size=16).sum()
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


@pytest.fixture()
def teacher():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(5)
    config = AutoConfig.from_pretrained(TINY)
    config.hidden_size, config.intermediate_size = 48, 96  # a different width: own LM head
    return AutoModelForCausalLM.from_config(config).float().requires_grad_(False)


@pytest.mark.parametrize("chunk", [1, 7, 0])
def test_a_teacher_is_projected_in_the_same_chunks_and_matches_full_logits(model, teacher,
                                                                           chunk):
    batch = _batch(model.config.vocab_size)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
          "use_cache": False}
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    ref = _kl(model(**kw).logits[:, :-1][mask], None, teacher(**kw).logits[:, :-1][mask],
              temperature=2.0).sum()
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    seen = []
    handle = teacher.get_output_embeddings().register_forward_hook(
        lambda m, i, o: seen.append(o.shape[0]))
    out = compute_loss(LossContext(model, KL, {"temperature": 2.0}, chunk, teacher), batch)
    out.loss_sum.backward()
    handle.remove()
    torch.testing.assert_close(out.loss_sum, ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=2e-5, msg=n)
    assert all(p.grad is None for p in teacher.parameters())
    assert max(seen) <= (chunk or mask.sum()), seen
    with torch.no_grad():  # validation: objective and plain NLL from the same logits
        val = compute_loss(LossContext(model, KL, {"temperature": 2.0}, chunk, teacher), batch)
    torch.testing.assert_close(val.loss_sum, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(val.nll_sum, _reference(model, batch).detach(), rtol=1e-5,
                               atol=1e-5)
