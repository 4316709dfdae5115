import torch

from mvq.nn.demasker import AdaptiveDemasker, DirectionConstrainedAttention


def slow_direction_constrained_attention(attn: DirectionConstrainedAttention, x, key_weights):
    """The formula written out: softmax(QKᵀ/√C), then every key's weight times m_j, no renormalisation."""
    b, c, h, w = x.shape
    normed = attn.norm(x)
    q = attn.q(normed).reshape(b, c, h * w)
    k = attn.k(normed).reshape(b, c, h * w)
    v = attn.v(normed).reshape(b, c, h * w)
    out = torch.zeros(b, c, h * w)
    for bi in range(b):
        for i in range(h * w):
            logits = torch.stack([(q[bi, :, i] * k[bi, :, j]).sum() for j in range(h * w)]) / c ** 0.5
            weights = torch.softmax(logits, dim=0) * key_weights[bi]
            out[bi, :, i] = (v[bi] * weights).sum(dim=1)
    return x + attn.proj_out(out.reshape(b, c, h, w))


def test_fused_attention_equals_post_softmax_key_weighting():
    torch.manual_seed(1)
    attn = DirectionConstrainedAttention(32)
    x = torch.randn(2, 32, 4, 4)
    key_weights = torch.where(torch.rand(2, 16) < 0.3, 1.0, 0.02)
    expected = slow_direction_constrained_attention(attn, x, key_weights)
    torch.testing.assert_close(attn(x, key_weights), expected, atol=1e-5, rtol=1e-5)
    # The weighting matters: all-ones weights give a different answer.
    assert not torch.allclose(attn(x, torch.ones(2, 16)), expected, atol=1e-4)


def test_masked_key_weights_grow_by_square_root_per_block():
    demasker = AdaptiveDemasker(codebook_dim=8, out_channels=32, grid_size=4, num_layers=8, mask_init_value=0.02)
    seen = []
    for block in demasker.blocks:
        block.attn.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    keep = torch.zeros(1, 16, dtype=torch.bool)
    keep[0, :4] = True
    positions = torch.arange(4).unsqueeze(0)
    demasker(torch.randn(1, 4, 8), positions, keep)
    masked = [float(w[0, 10]) for w in seen]
    kept = [float(w[0, 0]) for w in seen]
    expected = [0.02 ** (0.5 ** i) for i in range(8)]
    assert all(abs(a - b) < 1e-6 for a, b in zip(masked, expected))
    assert [round(m, 3) for m in masked] == [0.02, 0.141, 0.376, 0.613, 0.783, 0.885, 0.941, 0.970]
    assert kept == [1.0] * 8


def test_masked_cells_hold_the_mask_token_before_projection():
    demasker = AdaptiveDemasker(codebook_dim=8, out_channels=32, grid_size=4, num_layers=1)
    captured = {}
    demasker.project_in.register_forward_pre_hook(lambda mod, args: captured.update(x=args[0]))
    quantized = torch.randn(2, 3, 8)
    positions = torch.tensor([[0, 5, 9], [2, 3, 15]])
    keep = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, positions, True)
    demasker(quantized, positions, keep)
    grid = captured["x"].flatten(2).transpose(1, 2)  # B×N×D
    for b in range(2):
        for j, p in enumerate(positions[b]):
            assert torch.equal(grid[b, p], quantized[b, j])
        for cell in range(16):
            if not keep[b, cell]:
                assert torch.equal(grid[b, cell], demasker.mask_token.detach())
