"""Building blocks: RoPE relativity (1-D and 2-D), GEGLU, RMSNorm, sin-cos positions, KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.model.layers import (GEGLU, Attention, KVCache, RMSNorm, SwiGLU, apply_rope, patch_grid,
                                   rope_1d, rope_2d, sincos_2d_positions)

torch.set_default_dtype(torch.float32)


def _scores(q, k, rope_q, rope_k):
    return apply_rope(q, *rope_q) @ apply_rope(k, *rope_k).transpose(-1, -2)


def test_rope_1d_scores_depend_only_on_relative_offsets():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 7, 16, dtype=torch.float64, generator=g).unbind(0)
    positions = torch.tensor([0, 1, 2, 5, 6, 9, 13])
    base = _scores(q, k, rope_1d(positions, 16, 10000.0), rope_1d(positions, 16, 10000.0))
    for shift in (1, 17, 1000):
        shifted = rope_1d(positions + shift, 16, 10000.0)
        assert torch.allclose(_scores(q, k, shifted, shifted), base, atol=1e-5)
    # and they do depend on the offsets (otherwise the test above proves nothing)
    other = rope_1d(positions * 2, 16, 10000.0)
    assert not torch.allclose(_scores(q, k, other, other), base, atol=1e-3)


def test_rope_2d_scores_depend_only_on_relative_offsets():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 2, 16, 16, dtype=torch.float64, generator=g).unbind(0)
    rows, cols = patch_grid(4)
    base_rope = rope_2d(rows, cols, 16, 10000.0)
    base = _scores(q, k, base_rope, base_rope)
    for dr, dc in ((1, 0), (0, 3), (5, -2), (100, 40)):
        shifted = rope_2d(rows + dr, cols + dc, 16, 10000.0)
        assert torch.allclose(_scores(q, k, shifted, shifted), base, atol=1e-5)
    swapped = rope_2d(cols, rows, 16, 10000.0)  # transposed grid: different relative offsets
    assert not torch.allclose(_scores(q, k, swapped, swapped), base, atol=1e-3)


def test_rope_2d_each_axis_rotates_its_own_half_of_the_channels():
    head_dim, quarter = 16, 4
    rows, cols = patch_grid(4)
    cos, sin = rope_2d(rows, cols, head_dim, 10000.0)
    x = torch.randn(16, head_dim, dtype=torch.float64)
    row_half = torch.zeros(head_dim, dtype=torch.bool)
    row_half[:quarter] = row_half[2 * quarter:3 * quarter] = True
    # Moving only the columns leaves the row half untouched, and vice versa.
    cos_c, sin_c = rope_2d(rows, cols + 3, head_dim, 10000.0)
    cos_r, sin_r = rope_2d(rows + 3, cols, head_dim, 10000.0)
    base = apply_rope(x, cos, sin)
    assert torch.equal(apply_rope(x, cos_c, sin_c)[:, row_half], base[:, row_half])
    assert not torch.allclose(apply_rope(x, cos_c, sin_c)[:, ~row_half], base[:, ~row_half])
    assert torch.equal(apply_rope(x, cos_r, sin_r)[:, ~row_half], base[:, ~row_half])
    assert int(row_half.sum()) == head_dim // 2


def test_rope_is_a_rotation():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    cos, sin = rope_1d(torch.arange(5), 8, 10000.0)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    assert torch.allclose(apply_rope(x, *rope_1d(torch.zeros(5), 8, 10000.0)), x)


def test_geglu_is_gelu_gate_times_linear_then_projection():
    ff = GEGLU(8, 13).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    w_gate, w_up = ff.fc_in.weight[:13], ff.fc_in.weight[13:]
    b_gate, b_up = ff.fc_in.bias[:13], ff.fc_in.bias[13:]
    expected = ff.fc_out(F.gelu(x @ w_gate.T + b_gate) * (x @ w_up.T + b_up))
    assert torch.allclose(ff(x), expected)
    assert sum(p.numel() for p in ff.parameters()) == 2 * (8 * 13 + 13) + 13 * 8 + 8
    assert sum(p.numel() for p in GEGLU(8, 13, bias=False).parameters()) == 3 * 8 * 13


def test_swiglu_is_silu_gate_times_linear_then_projection():
    ff = SwiGLU(8, 13).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    w_gate, w_up = ff.fc_in.weight[:13], ff.fc_in.weight[13:]
    b_gate, b_up = ff.fc_in.bias[:13], ff.fc_in.bias[13:]
    gate = x @ w_gate.T + b_gate
    expected = ff.fc_out(gate * torch.sigmoid(gate) * (x @ w_up.T + b_up))  # Swish(g) = g * sigmoid(g)
    assert torch.allclose(ff(x), expected)
    geglu = GEGLU(8, 13).double()
    geglu.load_state_dict(ff.state_dict())  # the same parameters, another gate: another function
    assert not torch.allclose(geglu(x), ff(x))
    assert sum(p.numel() for p in ff.parameters()) == sum(p.numel() for p in geglu.parameters())


def test_rms_norm_formula():
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 6)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def test_sincos_positions_are_fixed_and_distinct():
    pos = sincos_2d_positions(4, 16)
    assert pos.shape == (16, 16)
    assert torch.allclose(pos[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert torch.cdist(pos, pos).fill_diagonal_(1.0).min() > 0.1


def test_attention_kv_cache_matches_full_causal_pass():
    torch.manual_seed(0)
    attn = Attention(16, 4).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    rope = rope_1d(torch.arange(6), 4, 10000.0)
    full = attn(x, rope=rope, is_causal=True)
    cache, steps = KVCache(), []
    for t in range(6):
        step_rope = tuple(r[t:t + 1] for r in rope)
        steps.append(attn(x[:, t:t + 1], rope=step_rope, cache=cache))
    assert len(cache) == 6
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-10)


def test_attention_key_padding_mask_ignores_masked_keys():
    torch.manual_seed(0)
    attn = Attention(8, 2).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    keep = torch.tensor([True, True, False, False, True])
    mask = keep[None, None, None, :].expand(1, 1, 5, 5)
    y1 = attn(x, attn_mask=mask)
    x2 = x.clone()
    x2[:, 2:4] = torch.randn(1, 2, 8, dtype=torch.float64)
    assert torch.allclose(attn(x2, attn_mask=mask)[:, keep], y1[:, keep])


def test_cross_attention_cache_reuses_context():
    torch.manual_seed(0)
    attn = Attention(8, 2, cross=True).eval()
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    cache = KVCache()
    first = attn(x, ctx, cache=cache)
    assert torch.allclose(attn(x, None, cache=cache), first)


def test_rms_norm_keeps_a_bfloat16_input_bfloat16_with_float32_weights():
    norm = RMSNorm(8)
    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    y = norm(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and norm.weight.grad.dtype == torch.float32


def test_rms_norm_under_cpu_bfloat16_autocast_keeps_dtype():
    norm = RMSNorm(8)
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(torch.nn.functional.linear(x, torch.eye(8)))  # a matmul under autocast gives bfloat16
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and norm.weight.grad.dtype == torch.float32
