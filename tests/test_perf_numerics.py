"""The speed-ups compute the same numbers: the lean model against the reference template's
full computation on the same weights (values and gradients), evaluation of distinct draws
against evaluation of every draw, fused against default AdamW, and the FLOP count."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from llcgrok.config import ModelConfig
from llcgrok.model import build_model, flops_per_example
from llcgrok.train import evaluate, evaluate_draws

ARCHS = [(1, 64, 4), (2, 32, 4), (3, 24, 2)]


@pytest.fixture(scope="module")
def reference(repo_root):
    sys.path.insert(0, str(repo_root))
    from benchmarks import reference as ref_mod

    return ref_mod


def pair(reference, layers, d, heads, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(num_layers=layers, d_model=d, num_heads=heads)
    ours = build_model(cfg, vocab_size=99, num_classes=97).double()
    ref = reference.build_reference(cfg, 99, 97).double()
    reference.copy_llcgrok_to_reference(ours, ref)
    return ours, ref


@pytest.mark.parametrize("layers,d,heads", ARCHS)
def test_lean_forward_and_gradients_equal_the_template(reference, layers, d, heads):
    # float64, so that the comparison sees the function and not float32 rounding
    ours, ref = pair(reference, layers, d, heads)
    x = torch.randint(0, 99, (32, 4))
    y = torch.randint(0, 97, (32,))
    logits_ours, logits_ref = ours(x), ref(x)[-1]
    assert torch.allclose(logits_ours, logits_ref, atol=1e-10, rtol=0)
    F.cross_entropy(logits_ours, y).backward()
    F.cross_entropy(logits_ref, y).backward()
    names = reference._name_map(layers)
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.allclose(p.grad, theirs[names[name]].grad, atol=1e-10, rtol=0), name


def test_weights_round_trip(reference):
    ours, ref = pair(reference, 2, 32, 4)
    torch.manual_seed(1)
    other = build_model(ours.cfg, 99, 97).double()
    reference.copy_reference_to_llcgrok(ref, other)
    for a, b in zip(ours.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_distinct_draw_evaluation_equals_every_draw():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_layers=1, d_model=32, num_heads=4), 99, 97)
    inputs = torch.randint(0, 99, (300, 4))
    targets = torch.randint(0, 97, (300,))
    targets[:100] = model(inputs[:100]).argmax(-1).detach()  # some right answers, so accuracy is not 0
    draws = torch.randint(0, 300, (1000,))
    every = evaluate(model, inputs[draws], targets[draws], chunk=8192)
    distinct = evaluate_draws(model, inputs, targets, draws)
    assert distinct[0] == pytest.approx(every[0], rel=1e-5)
    assert distinct[1] == pytest.approx(every[1], abs=1e-6)
    assert 0 < every[1] < 1
    for chunk in (7, 64, 512):
        assert evaluate(model, inputs[draws], targets[draws], chunk=chunk)[0] == pytest.approx(every[0], rel=1e-5)
    assert model.training  # evaluation puts the mode back


def test_fused_adamw_is_adamw():
    torch.manual_seed(0)
    # float64: Adam divides by sqrt(v), which turns float32 rounding of near-zero gradients
    # into visible differences; in float64 only the implementations are compared
    a = build_model(ModelConfig(num_layers=1, d_model=32, num_heads=4), 99, 97).double()
    b = build_model(ModelConfig(num_layers=1, d_model=32, num_heads=4), 99, 97).double()
    b.load_state_dict(a.state_dict())
    kw = dict(lr=1e-3, betas=(0.9, 0.98), weight_decay=0.5)
    opt_a = torch.optim.AdamW(a.parameters(), fused=True, **kw)
    opt_b = torch.optim.AdamW(b.parameters(), **kw)
    x, y = torch.randint(0, 99, (64, 4)), torch.randint(0, 97, (64,))
    for _ in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-12, rtol=0)


@pytest.mark.parametrize("layers,d,heads", ARCHS + [(2, 128, 4)])
def test_flops_per_example_counts_the_lean_forward(layers, d, heads):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = ModelConfig(num_layers=layers, d_model=d, num_heads=heads)
    model = build_model(cfg, 99, 97)
    # the math attention path, so that the counter sees the attention products too
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 99, (8, 4)))
    assert counter.get_total_flops() == 8 * flops_per_example(cfg, 97)
