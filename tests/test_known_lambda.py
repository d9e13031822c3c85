"""Closed-form learning coefficients: worked values, agreement between the formulas, bad input."""

import itertools

import numpy as np
import pytest

from llcgrok.known_lambda import dln_lambda, normal_crossing_lambda, quadratic_llc, regular_lambda, rrr_lambda


@pytest.mark.parametrize(
    "widths, rank, lam, multiplicity",
    [
        ((5, 3, 5), 0, 6.5, 2),
        ((5, 4, 5), 0, 8.0, 1),
        ((4, 3, 8), 0, 6.0, 1),
        ((8, 3, 4), 0, 6.0, 1),
        ((10, 2, 10, 10), 2, 18.0, 1),
        ((16, 8, 8, 8, 16), 4, 62.0, 1),
        ((50, 200, 200, 50), 5, 1250.0, 1),
    ],
)
def test_dln_worked_values(widths, rank, lam, multiplicity):
    assert dln_lambda(widths, rank) == (lam, multiplicity)


def test_one_matrix_is_regular():
    # A single matrix (two widths) is a linear model: lambda = d/2 whatever the true rank.
    for h1, h2 in itertools.product(range(1, 7), repeat=2):
        for r in range(min(h1, h2) + 1):
            assert dln_lambda((h1, h2), r) == (regular_lambda(h1 * h2), 1)


def _rrr_multiplicity(M, H, N, r):
    # Aoyagi & Watanabe (2005): multiplicity 2 exactly in the fourth case with M + N + H + r odd.
    fourth = not (M + H < N + r or N + H < M + r or M + N < H + r)
    return 2 if fourth and (M + N + H + r) % 2 else 1


def test_two_matrices_agree_with_reduced_rank_regression():
    count = 0
    for M, H, N in itertools.product(range(1, 11), repeat=3):
        for r in range(min(M, H, N) + 1):
            lam, multiplicity = dln_lambda((M, H, N), r)
            assert lam == rrr_lambda(M, H, N, r), (M, H, N, r)
            assert multiplicity == _rrr_multiplicity(M, H, N, r), (M, H, N, r)
            count += 1
    assert count > 3000  # every one of the four cases is visited many times
    assert {_rrr_case(M, H, N, r) for M, H, N in itertools.product(range(1, 11), repeat=3) for r in range(min(M, H, N) + 1)} == {1, 2, 3, 4}


def _rrr_case(M, H, N, r):
    return 1 if M + H < N + r else 2 if N + H < M + r else 3 if M + N < H + r else 4


@pytest.mark.parametrize("M, H, N, r, lam", [(4, 3, 8, 0, 6.0), (8, 3, 4, 0, 6.0), (2, 9, 3, 1, 3.0), (5, 3, 5, 0, 6.5), (3, 2, 3, 1, 3.5)])
def test_rrr_each_case(M, H, N, r, lam):
    # (4,3,8): case 1, HM/2; (8,3,4): case 2; (2,9,3): case 3, MN/2; (5,3,5), (3,2,3,1): case 4,
    # by hand (2*3*10 - 0 - 9 + 1)/8 = 6.5 and (2*3*6 - 0 - 9 + 1)/8 = 3.5 (M+N+H+r odd: s = 1).
    assert rrr_lambda(M, H, N, r) == lam


def test_dln_bounds_and_symmetry_over_deep_networks():
    # 0 <= lambda <= d/2, and W_L...W_1 has the same lambda as its transpose (reversed widths).
    for widths in itertools.product(range(1, 6), repeat=4):
        d = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        for r in range(min(widths) + 1):
            lam, multiplicity = dln_lambda(widths, r)
            assert 0 <= lam <= d / 2 and multiplicity in (1, 2)
            assert dln_lambda(widths[::-1], r) == (lam, multiplicity)


def test_full_rank_middle_layer_wider_than_ends_is_regular_map():
    # A hidden layer at least as wide as min(input, output) and a full-rank truth: the
    # product ranges over all M x N maps near a generic point, lambda = MN/2 (case 3 of RRR).
    assert dln_lambda((3, 10, 4), 3) == (6.0, 1)
    assert rrr_lambda(3, 10, 4, 3) == 6.0


def test_regular_and_normal_crossing():
    assert regular_lambda(7) == 3.5
    assert normal_crossing_lambda([1, 2]) == (0.25, 1)
    assert normal_crossing_lambda([1, 1]) == (0.5, 2)
    assert normal_crossing_lambda([3, 1, 3]) == (1 / 6, 2)


def test_quadratic_llc():
    h = np.array([0.0, 1.0, 10.0])
    assert quadratic_llc(h, nbeta=10.0, gamma=10.0) == pytest.approx(0.5 * (0 + 0.5 + 100 / 110))
    # gamma -> 0: every positive direction counts 1/2 (the regular count).
    assert quadratic_llc([1.0, 2.0], nbeta=100.0, gamma=0.0) == 1.0
    # strong localization: nbeta tr(H) / (2 gamma).
    assert quadratic_llc([1.0, 2.0], nbeta=1.0, gamma=1e6) == pytest.approx(3 / 2e6, rel=1e-5)
    # the discretised chain's stationary variance is 1 / (a (1 - eps a / 4)); here a = 2.
    assert quadratic_llc([1.0], nbeta=1.0, gamma=1.0, epsilon=0.4) == pytest.approx(0.5 * 0.5 / 0.8)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: dln_lambda((5, 3, 5), 4), "rank 4 exceeds the smallest width 3"),
        (lambda: dln_lambda((5, 0, 5), 0), r"widths\[1\] must be an integer >= 1"),
        (lambda: dln_lambda((5,), 0), "input and an output width"),
        (lambda: dln_lambda((5, 3, 5), -1), "rank must be an integer >= 0"),
        (lambda: dln_lambda((5, 2.5, 5), 0), "must be an integer"),
        (lambda: dln_lambda((5, True, 5), 0), "must be an integer"),
        (lambda: rrr_lambda(5, 3, 5, 4), "rank r = 4 exceeds min"),
        (lambda: rrr_lambda(0, 3, 5, 0), "M must be an integer >= 1"),
        (lambda: normal_crossing_lambda([1, 0]), r"ks\[1\] must be an integer >= 1"),
        (lambda: normal_crossing_lambda([]), "at least one"),
        (lambda: regular_lambda(-1), "d must be"),
        (lambda: quadratic_llc([-1.0], 1.0, 1.0), "not a minimum"),
        (lambda: quadratic_llc([0.0], 1.0, 0.0), "improper"),
        (lambda: quadratic_llc([1.0], 0.0, 1.0), "nbeta must be > 0"),
        (lambda: quadratic_llc([1.0], 1.0, -1.0), "gamma must be >= 0"),
        (lambda: quadratic_llc([1.0], 1.0, 1.0, epsilon=2.0), "stability limit"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- the toy models


def test_dln_sits_at_a_minimal_factorisation_of_its_teacher():
    import torch

    from llcgrok.toy_models import make_dln

    model, (x, y), loss = make_dln((6, 4, 5, 3), 2, num_data=500, noise_std=0.5, seed=1)
    assert sum(p.numel() for p in model.parameters()) == 6 * 4 + 4 * 5 + 5 * 3
    ranks = [int(torch.linalg.matrix_rank(w.detach())) for w in model.weights]
    assert ranks == [2, 2, 2]  # every factor of rank r, not only the product
    assert torch.linalg.svdvals(model.product().detach())[:3].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-5)
    # The loss is the Gaussian NLL per example: ||y - f(x)||^2 / (2 sigma^2), mean over the batch.
    with torch.no_grad():
        expected = ((y - model(x)) ** 2).sum(dim=1).mean() / (2 * 0.25)
        assert loss(model, x, y).item() == pytest.approx(float(expected))
    # Orthogonal noise: w* minimises the empirical loss (zero gradient on the full data).
    grads = torch.autograd.grad(loss(model, x, y), list(model.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-4
    _, (x2, y2), _ = make_dln((6, 4, 5, 3), 2, num_data=500, noise_std=0.5, seed=1, orthogonal_noise=False)
    grads = torch.autograd.grad(loss(model, x2, y2), list(model.parameters()))
    assert max(float(g.abs().max()) for g in grads) > 1e-3


def test_rank_zero_dln_is_the_origin_and_rrr_is_two_matrices():
    from llcgrok.toy_models import make_dln, make_rrr

    model, _, _ = make_dln((4, 3, 8), 0, num_data=50)
    assert all(float(w.detach().abs().max()) == 0 for w in model.weights)
    rrr, (x, y), _ = make_rrr(4, 3, 8, 1, num_data=50)
    assert rrr.widths == (4, 3, 8) and x.shape == (50, 4) and y.shape == (50, 8)


def test_potentials_and_their_losses():
    import pickle

    import torch

    from llcgrok.toy_models import make_normal_crossing, make_quadratic

    model, (x, y), loss = make_quadratic([0.5, 2.0], num_data=10, seed=3)
    assert len(x) == 10 and loss(model, x, y).item() == 0.0
    with torch.no_grad():
        model.w.add_(torch.tensor([1.0, -1.0]))
    assert loss(model, x, y).item() == pytest.approx(0.5 * (0.5 + 2.0))
    model, (x, y), loss = make_normal_crossing([1, 2], num_data=10, copies=3)
    with torch.no_grad():
        model.w.copy_(torch.tensor([[2.0, -1.0], [1.0, 1.0], [0.0, 5.0]]))
    assert loss(model, x, y).item() == pytest.approx(4.0 + 1.0 + 0.0)
    # Module-level functions pickle by reference: spawned chain workers can import them.
    assert pickle.loads(pickle.dumps(loss)) is loss


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: m.make_dln((5, 3, 5), 4), "rank 4 exceeds the smallest width 3"),
        (lambda m: m.make_dln((5, 3, 5), 1, num_data=3), "at least the input width"),
        (lambda m: m.make_dln((5, 3, 5), 1, noise_std=0.0), "noise_std must be > 0"),
        (lambda m: m.make_quadratic([1.0, -2.0]), ">= 0"),
        (lambda m: m.make_quadratic([1.0], num_data=1), "num_data must be >= 2"),
        (lambda m: m.make_normal_crossing([1, 2], copies=0), "copies must be an integer >= 1"),
        (lambda m: m.make_normal_crossing([0, 2]), r"ks\[0\] must be an integer >= 1"),
    ],
)
def test_toy_models_refuse_bad_input(make, match):
    from llcgrok import toy_models

    with pytest.raises(ValueError, match=match):
        make(toy_models)
