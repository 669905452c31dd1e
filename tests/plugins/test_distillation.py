"""The distillation objectives against plain float64 references written another way
(probabilities, not log space): values and gradients, temperatures, beta at 0, 1 and between,
alpha mixing, masked positions through the chunked loss path, bf16 logits of large magnitude
and teacher logits of -inf."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tempering.chat.encoding import IGNORE_INDEX
from tempering.plugins import objectives as o
from tempering.plugins.loss import compute_loss
from tempering.train.losses import LossContext
from tests.conftest import REGISTRY, TINY


def _probs(logits, temperature):
    return torch.softmax(logits.double() / temperature, -1)


def _ref_kl(p, q):
    return (p * (p / q).log()).sum(-1)


def reference(name, s, labels, t, temperature=1.0, beta=0.5, alpha=0.0):
    """Straightforward full-tensor formulas in float64."""
    p_t, p_s = _probs(t, temperature), _probs(s, temperature)
    if name == "hard_ce":
        kd = F.cross_entropy(s.double(), t.argmax(-1), reduction="none")
    elif name == "soft_kl":
        kd = _ref_kl(p_t, p_s) * temperature ** 2
    elif name == "reverse_kl":
        kd = _ref_kl(p_s, p_t) * temperature ** 2
    elif name == "jsd":
        if beta == 0:
            kd = _ref_kl(p_t, p_s)
        elif beta == 1:
            kd = _ref_kl(p_s, p_t)
        else:
            m = beta * p_t + (1 - beta) * p_s
            kd = beta * _ref_kl(p_t, m) + (1 - beta) * _ref_kl(p_s, m)
        kd = kd * temperature ** 2
    else:
        kd = 0.5 * (p_t - p_s).abs().sum(-1)
    ce = F.cross_entropy(s.double(), labels, reduction="none")
    return alpha * ce + (1 - alpha) * kd


def log_space_reference(name, s, labels, t, temperature=1.0):
    """The same in float64 log space, for logits whose probabilities underflow even there."""
    if name == "hard_ce":
        return F.cross_entropy(s, t.argmax(-1), reduction="none")
    log_t, log_s = (torch.log_softmax(x / temperature, -1) for x in (t, s))

    def kl(a, b):
        return (a.exp() * (a - b)).sum(-1)

    if name == "soft_kl":
        return kl(log_t, log_s) * temperature ** 2
    if name == "reverse_kl":
        return kl(log_s, log_t) * temperature ** 2
    if name == "jsd":
        log_m = torch.logaddexp(log_t, log_s) - torch.log(torch.tensor(2.0, dtype=s.dtype))
        return (0.5 * kl(log_t, log_m) + 0.5 * kl(log_s, log_m)) * temperature ** 2
    return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(-1)


CASES = [
    ("hard_ce", {}), ("hard_ce", {"alpha": 0.3}),
    *[("soft_kl", {"temperature": t}) for t in (1.0, 0.5, 2.0, 4.0)],
    ("soft_kl", {"temperature": 2.0, "alpha": 0.5}),
    *[("reverse_kl", {"temperature": t}) for t in (1.0, 3.0)],
    *[("jsd", {"beta": b}) for b in (0.0, 0.1, 0.5, 0.9, 1.0)],
    ("jsd", {"beta": 0.5, "temperature": 2.0, "alpha": 0.2}),
    ("jsd", {"beta": 0.0, "temperature": 2.0}), ("jsd", {"beta": 1.0, "temperature": 0.5}),
    ("tvd", {}), ("tvd", {"temperature": 2.0, "alpha": 0.4}),
]


def _ids(case):
    name, options = case
    return name + "".join(f"-{k}{v}" for k, v in options.items())


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_values_and_gradients_match_the_float64_reference(case):
    name, options = case
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(9, 37, generator=g) * 3).requires_grad_(True)
    t = torch.randn(9, 37, generator=g) * 3
    labels = torch.randint(0, 37, (9,), generator=g)
    got = getattr(o, name)(s, labels, t, **options)
    s64 = s.detach().double().requires_grad_(True)
    want = reference(name, s64, labels, t.double(), **options)
    assert got.dtype == torch.float32 and got.shape == (9,)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


def test_jsd_between_the_ends_lies_between_zero_and_the_bounds():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(50, 20, generator=g), torch.randn(50, 20, generator=g)
    labels = torch.zeros(50, dtype=torch.long)
    for beta in (0.1, 0.5, 0.9):
        value = o.jsd(s, labels, t, beta=beta)
        # a generalized JSD is at most the entropy bound -beta log beta - (1-beta) log(1-beta)
        bound = -(beta * torch.tensor(beta).log() + (1 - beta) * torch.tensor(1 - beta).log())
        assert (value >= 0).all() and (value <= bound + 1e-6).all()
    same = o.jsd(s, labels, s.clone(), beta=0.5)
    torch.testing.assert_close(same, torch.zeros(50), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["hard_ce", "soft_kl", "reverse_kl", "jsd", "tvd"])
def test_bf16_logits_of_large_magnitude_stay_finite_and_accurate(name):
    g = torch.Generator().manual_seed(5)
    s = (torch.randn(16, 512, generator=g) * 400).bfloat16().requires_grad_(True)
    t = (torch.randn(16, 512, generator=g) * 400).bfloat16()
    labels = torch.randint(0, 512, (16,), generator=g)
    options = {"temperature": 2.0} if name != "hard_ce" else {}
    got = getattr(o, name)(s, labels, t, **options)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(s.grad.float()).all()
    want = log_space_reference(name, s.detach().double(), labels, t.double(), **options)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["soft_kl", "reverse_kl", "jsd", "tvd"])
def test_a_teacher_that_rules_tokens_out_gives_no_nan(name):
    g = torch.Generator().manual_seed(6)
    s = torch.randn(4, 10, generator=g).requires_grad_(True)
    t = torch.randn(4, 10, generator=g)
    t[:, 7:] = float("-inf")  # e.g. a vocabulary the teacher masks
    labels = torch.zeros(4, dtype=torch.long)
    got = getattr(o, name)(s, labels, t)
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(s.grad).all()
    if name == "soft_kl":  # the teacher's zeros contribute nothing
        want = log_space_reference(name, s.detach().double(), labels, t.double().clamp(min=-1e4))
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_bad_options_name_themselves():
    s = t = torch.zeros(2, 3)
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        o.soft_kl(s, labels, t, temperature=0)
    with pytest.raises(ValueError, match="beta must be in"):
        o.jsd(s, labels, t, beta=1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        o.tvd(s, labels, t, alpha=-0.1)


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).float()
    torch.manual_seed(9)
    config = AutoConfig.from_pretrained(TINY)
    config.hidden_size, config.intermediate_size = 48, 96
    teacher = AutoModelForCausalLM.from_config(config).float().requires_grad_(False)
    return student, teacher


def _batch(vocab):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 30), generator=g)
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX      # prompt
    labels[1, 12:18] = IGNORE_INDEX   # an untrained turn in the middle
    mask = torch.ones_like(ids)
    mask[2, 22:] = 0                  # padding
    labels[2, 22:] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "hard_ce" or c[1]], ids=_ids)
def test_the_chunked_loss_path_matches_full_logits_at_masked_positions(pair, case):
    name, options = case
    student, teacher = pair
    student.zero_grad()
    batch = _batch(student.config.vocab_size)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
          "use_cache": False}
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    s = student(**kw).logits[:, :-1][mask].double()
    with torch.no_grad():
        t = teacher(**kw).logits[:, :-1][mask].double()
    ref = reference(name, s, targets[mask], t, **options).sum()
    ref.backward()
    want = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    objective = REGISTRY.get("objective", name)
    out = compute_loss(LossContext(student, objective, options, 5, teacher), batch)
    out.loss_sum.backward()
    assert out.num_tokens == int(mask.sum())
    torch.testing.assert_close(out.loss_sum.double(), ref.detach(), rtol=1e-4, atol=1e-5)
    for n, p in student.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=2e-5, msg=n)
    assert all(p.grad is None for p in teacher.parameters())
