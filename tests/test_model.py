import torch
import torch.nn as nn

from llcgrok.config import ModelConfig
from llcgrok.model import build_model, count_params


def test_shapes_and_param_count():
    for layers, d, heads in [(1, 64, 4), (2, 128, 4), (4, 32, 2)]:
        cfg = ModelConfig(num_layers=layers, d_model=d, num_heads=heads)
        model = build_model(cfg, vocab_size=99, num_classes=97)
        out = model(torch.randint(0, 99, (7, 4)))
        assert out.shape == (7, 97)
        assert model.num_params == count_params(cfg, 99, 97)
    assert count_params(ModelConfig(), 99, 97) == 422497  # reference 2x128, 4 heads


def _reference_forward(model, inputs):
    """The full (not lean) post-norm computation with nn.MultiheadAttention, on the same
    weights: every position through every block, logits read at the last position."""
    d = model.cfg.d_model
    x = model.token_embeddings(inputs) + model.position_embeddings.weight[: inputs.shape[1]]
    mask = torch.triu(torch.full((inputs.shape[1],) * 2, float("-inf")), diagonal=1)
    for block in model.blocks:
        mha = nn.MultiheadAttention(d, model.cfg.num_heads, batch_first=True)
        mha.in_proj_weight.data.copy_(block.attn.in_proj.weight)
        mha.in_proj_bias.data.copy_(block.attn.in_proj.bias)
        mha.out_proj.weight.data.copy_(block.attn.out_proj.weight)
        mha.out_proj.bias.data.copy_(block.attn.out_proj.bias)
        a, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
        h = block.attn_norm(x + a)
        x = block.ffn_norm(h + block.ffn(h))
    return model.head(model.final_norm(x[:, -1]))


def test_lean_forward_matches_full_multihead_attention():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_layers=2, d_model=64, num_heads=4), 99, 97)
    inputs = torch.randint(0, 99, (16, 4))
    with torch.no_grad():
        assert torch.allclose(model(inputs), _reference_forward(model, inputs), atol=1e-5)


def test_pre_norm_variant_runs_and_differs():
    torch.manual_seed(0)
    post = build_model(ModelConfig(num_layers=2, d_model=32, num_heads=4), 10, 8)
    torch.manual_seed(0)
    pre = build_model(ModelConfig(num_layers=2, d_model=32, num_heads=4, norm="pre"), 10, 8)
    x = torch.randint(0, 10, (5, 4))
    assert pre(x).shape == (5, 8)
    assert not torch.allclose(pre(x), post(x))
