"""Packing: best-fit decreasing bins, per-document attention, window token totals."""

from __future__ import annotations

import random

import pytest
import torch

from tempering.chat.encoding import IGNORE_INDEX, encode_conversation
from tempering.data.packing import (
    best_fit_decreasing,
    collate_packed,
    collate_padded,
    plan_epoch,
    window_totals,
)
from tempering.train.losses import forward_hidden, project_logits
from tests.conftest import REGISTRY, TINY


def test_best_fit_decreasing_packs_every_example_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # best fit decreasing is within 11/9 OPT + 1; the volume bound is a lower bound on OPT
    assert len(bins) <= 11 / 9 * (sum(lengths) / 128) + 2
    assert bins == best_fit_decreasing(lengths, 128)  # deterministic


def test_best_fit_decreasing_rejects_oversized_examples():
    with pytest.raises(ValueError, match="example 1 has 300 tokens"):
        best_fit_decreasing([10, 300], 256)


def test_plan_splits_evenly_across_ranks_and_reshuffles_per_epoch():
    lengths = [5 + i % 17 for i in range(101)]
    kw = dict(batch_size=3, max_length=64, packing=True, group_by_length=True, seed=1, world_size=2)
    p0, p1 = plan_epoch(lengths, epoch=0, **kw), plan_epoch(lengths, epoch=1, **kw)
    assert len(p0) % 2 == 0 and p0 != p1
    bins = {tuple(b) for b in best_fit_decreasing(lengths, 64)}
    rows0 = [tuple(r) for b in p0 for r in b]
    rows1 = [tuple(r) for b in p1 for r in b]
    assert set(rows0) <= bins and set(rows1) <= bins  # the same bins, in a new order
    assert len(bins) - len(rows0) < 2 * 3  # at most the rank remainder is left out
    unpacked = plan_epoch(lengths, epoch=0, **{**kw, "packing": False, "world_size": 1})
    assert sorted(r[0] for b in unpacked for r in b) == list(range(101))


def test_window_totals_sum_every_rank_and_micro_batch_of_a_step():
    plan = [[[i]] for i in range(10)]  # 10 micro-batches of one example each
    supervised = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    totals = window_totals(plan, supervised, world_size=2, accumulate=2)
    # rank r gets micro-batches r, r+2, ...: 5 local batches -> windows [0,1], [2,3], [4]
    assert totals[:4] == [10] * 4 and totals[4:8] == [26] * 4 and totals[8:] == [19] * 2


@pytest.fixture()
def model_and_examples(tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tools.build_assets import generate_tasks

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).float().eval()
    examples = []
    for record in generate_tasks(7, seed=5):
        enc = encode_conversation(record["messages"], tiny_tokenizer, chat_template="chatml", registry=REGISTRY)
        examples.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return model, examples


def _per_token_nll(model, batch):
    hidden = forward_hidden(model, batch)  # [b, s, d]
    logits = project_logits(model, hidden[:, :-1])
    targets = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2).float(), targets.clamp(min=0), reduction="none")
    return nll * (targets != IGNORE_INDEX)  # [b, s-1]


@torch.no_grad()
def test_packed_loss_of_each_sample_equals_its_loss_alone(model_and_examples):
    model, examples = model_and_examples
    alone = [float(_per_token_nll(model, collate_padded([e], 0)).sum()) for e in examples]
    packed = collate_packed([examples[:4], examples[4:]], pad_id=0)
    assert packed["input_ids"].shape[0] == 2 and "attention_mask" not in packed
    nll = _per_token_nll(model, packed)
    got = []
    for row, docs in enumerate([examples[:4], examples[4:]]):
        at = 0
        for e in docs:
            n = len(e["input_ids"])
            got.append(float(nll[row, at:at + n - 1].sum()))  # predictions inside the document
            at += n
    assert got == pytest.approx(alone, abs=1e-5)
    # and the packed batch trains exactly the same tokens
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == sum(
        sum(1 for x in e["labels"][1:] if x != IGNORE_INDEX) for e in examples)


@torch.no_grad()
def test_without_document_boundaries_the_losses_would_differ(model_and_examples):
    """Guards the parity test: a plain causal row (no position resets) changes the loss."""
    model, examples = model_and_examples
    packed = collate_packed([examples[:4]], pad_id=0)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    assert not torch.allclose(_per_token_nll(model, packed), _per_token_nll(model, leaky),
                              atol=1e-4)
