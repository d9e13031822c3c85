"""The tiny transformer: parameter count, low-rank projections, tied embeddings, causality."""

import itertools

import pytest
import torch

from llcgrok.tiny import LowRankLinear, TinyConfig, TinyTransformer, count_params


def test_parameter_count_by_hand():
    # d 8, 1 layer, 2 heads, d_ff 16, vocab 12, 11 positions, full rank:
    # embed 12*8 + pos 11*8 + block (8 + 8*24 + 8*8 + 8 + 8*16 + 16*8) + final norm 8
    cfg = TinyConfig(d_model=8, num_layers=1, num_heads=2, d_ff=16)
    expected = 96 + 88 + (8 + 192 + 64 + 8 + 128 + 128) + 8
    assert count_params(cfg, 12, 11) == expected == 720
    assert TinyTransformer(cfg, 12, 11).num_params == 720
    # ranks: pos 2*(11+8), qkv 2*(8+24), out 1*(8+8), ffn 2*(8+16) twice
    low = TinyConfig(d_model=8, num_layers=1, num_heads=2, d_ff=16, pos_rank=2, qkv_rank=2, attn_out_rank=1, ffn_rank=2)
    assert count_params(low, 12, 11) == 96 + 38 + (8 + 64 + 16 + 8 + 48 + 48) + 8 == 334
    # scalar head: d + 1 more; attention only (d_ff 0): no FFN and no FFN norm
    assert count_params(cfg, 12, 11, "scalar") == 720 + 9
    assert count_params(TinyConfig(d_model=8, num_heads=1, d_ff=0), 4, 16, "scalar") == 32 + 128 + (8 + 192 + 64) + 8 + 9


def test_count_matches_the_built_model_over_a_grid():
    for layers, d_ff, pos, qkv, out, ffn, output in itertools.product(
        (1, 2), (0, 12), (0, 3), (0, 2), (0, 4), (0, 3), ("tokens", "scalar")
    ):
        if d_ff == 0 and ffn:
            continue
        cfg = TinyConfig(d_model=8, num_layers=layers, num_heads=2, d_ff=d_ff, pos_rank=pos, qkv_rank=qkv,
                         attn_out_rank=out, ffn_rank=ffn)
        model = TinyTransformer(cfg, 5, 9, output)
        assert model.num_params == count_params(cfg, 5, 9, output), cfg


def test_rank_zero_is_full_rank_and_rank_r_is_rank_r():
    torch.manual_seed(0)
    full = LowRankLinear(6, 10, 0)
    assert [n for n, _ in full.named_parameters()] == ["weight"] and full.weight.shape == (10, 6)
    assert torch.linalg.matrix_rank(full.full_weight()) == 6
    low = LowRankLinear(6, 10, 2)
    assert {n: tuple(p.shape) for n, p in low.named_parameters()} == {"down": (2, 6), "up": (10, 2)}
    assert torch.linalg.matrix_rank(low.full_weight()) == 2
    x = torch.randn(3, 6)
    assert torch.allclose(low(x), x @ low.full_weight().T, atol=1e-6)
    # lowering a rank lowers the count; the position embedding is factorised too
    base = TinyConfig(d_model=16, d_ff=32)
    counts = [count_params(TinyConfig(d_model=16, d_ff=32, qkv_rank=r), 12, 20) for r in (0, 8, 4, 1)]
    assert counts == sorted(counts, reverse=True) and counts[0] == count_params(base, 12, 20)
    model = TinyTransformer(TinyConfig(d_model=16, d_ff=32, pos_rank=2), 12, 20)
    assert torch.linalg.matrix_rank(model.position_embeddings.table()) == 2


def test_tied_embeddings_are_one_tensor():
    torch.manual_seed(0)
    model = TinyTransformer(TinyConfig(d_model=8, num_heads=2, d_ff=16), 12, 11)
    assert model.unembedding is model.token_embeddings.weight
    shaped = [n for n, p in model.named_parameters() if p.shape == (12, 8)]
    assert shaped == ["token_embeddings.weight"]
    x = torch.randint(0, 12, (4, 11))
    out = model(x)
    assert out.shape == (4, 11, 12)
    out.sum().backward()
    assert model.token_embeddings.weight.grad is not None
    # the logits are the final hidden state times the embedding matrix
    with torch.no_grad():
        model.token_embeddings.weight[3] += 1.0
    assert not torch.allclose(model(x)[..., 3], out[..., 3].detach())
    scalar = TinyTransformer(TinyConfig(d_model=8, num_heads=2, d_ff=0), 4, 16, "scalar")
    assert scalar(torch.randint(0, 4, (3, 16))).shape == (3, 16)
    with pytest.raises(AttributeError):
        scalar.unembedding


def test_outputs_are_causal():
    torch.manual_seed(0)
    model = TinyTransformer(TinyConfig(d_model=8, num_layers=2, num_heads=2, d_ff=16, qkv_rank=2), 12, 10)
    x = torch.randint(0, 12, (2, 10))
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % 12
    with torch.no_grad():
        assert torch.allclose(model(x)[:, :6], model(y)[:, :6], atol=1e-6)
        assert not torch.allclose(model(x)[:, 6:], model(y)[:, 6:])


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=8, num_heads=3), "must divide"),
    (dict(d_model=8, qkv_rank=9), "exceeds the full rank 8"),
    (dict(d_model=8, d_ff=0, ffn_rank=2), "d_ff is 0"),
    (dict(d_model=8, pos_rank=-1), "non-negative"),
])
def test_bad_configs_say_why(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        TinyTransformer(TinyConfig(**kwargs), 12, 11)
    assert "\n" not in str(info.value)


def test_describe_reports_the_parameter_count():
    model = TinyTransformer(TinyConfig(d_model=8, num_heads=2, d_ff=16, qkv_rank=2), 12, 11)
    assert f"{model.num_params:,} parameters" in model.describe() and "qkv_rank=2" in model.describe()
