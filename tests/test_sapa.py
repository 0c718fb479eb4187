"""ul.sapa_similarity and ul.SAPA."""

import pytest
import torch
import torch.nn.functional as F

import upsamplelib as ul
from conftest import ALL_BACKENDS, KERNEL_BACKENDS, on
from upsamplelib.ops.sapa import sapa_similarity_reference


def _qk(n=1, d=3, h=3, w=4, s=2, dtype=torch.float64, requires_grad=False):
    q = torch.randn(n, d, s * h, s * w, dtype=dtype, requires_grad=requires_grad)
    key = torch.randn(n, d, h, w, dtype=dtype, requires_grad=requires_grad)
    return q, key


def _naive(q, key, k, s):
    n, d, h, w = key.shape
    r = (k - 1) // 2
    out = torch.zeros(n, k * k, s * h, s * w, dtype=q.dtype)
    for b in range(n):
        for Y in range(s * h):
            for X in range(s * w):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        y, x = Y // s + dy, X // s + dx
                        if 0 <= y < h and 0 <= x < w:
                            out[b, (dy + r) * k + dx + r, Y, X] = (q[b, :, Y, X] * key[b, :, y, x]).sum()
    return out


@pytest.mark.parametrize("k,s", [(1, 1), (3, 2), (5, 2), (3, 3), (7, 1)])
def test_reference_is_the_spec_formula(k, s):
    q, key = _qk(d=2, h=3, w=3, s=s)
    torch.testing.assert_close(sapa_similarity_reference(q, key, k, s), _naive(q, key, k, s))


@pytest.mark.parametrize("k,s", [(1, 1), (3, 2), (5, 2), (3, 3), (5, 4)])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backends_match_reference(k, s, backend):
    q, key = _qk(n=2, d=3, h=3, w=4, s=s)
    torch.testing.assert_close(on(backend, ul.sapa_similarity)(q, key, k, s), sapa_similarity_reference(q, key, k, s),
                               rtol=1e-12, atol=1e-12)


def test_cpu_matches_reference_at_realistic_size():
    q, key = _qk(n=2, d=64, h=15, w=17, dtype=torch.float32)
    torch.testing.assert_close(ul.sapa_similarity(q, key, 5, 2, backend="cpu"),
                               sapa_similarity_reference(q, key, 5, 2), rtol=1e-5, atol=1e-5)


def test_out_of_map_neighbours_get_logit_zero():
    q, key = _qk(d=2, h=2, w=2, s=1)
    logits = ul.sapa_similarity(q, key, 3, 1, backend="cpu")
    # (0, 0) has no row above: slots 0, 1, 2 and no column to the left: 0, 3, 6
    assert torch.all(logits[0, [0, 1, 2, 3, 6], 0, 0] == 0)
    assert torch.all(logits[0, [4, 5, 7, 8], 0, 0] != 0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradients_match_reference(backend):
    q, key = _qk(d=3, h=3, w=4, s=2, requires_grad=True)
    grad = torch.randn(1, 9, 6, 8, dtype=torch.float64)
    expected = torch.autograd.grad(sapa_similarity_reference(q, key, 3, 2), (q, key), grad)
    got = torch.autograd.grad(on(backend, ul.sapa_similarity)(q, key, 3, 2), (q, key), grad)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck(backend):
    q, key = _qk(d=2, h=2, w=3, s=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: on(backend, ul.sapa_similarity)(a, b, 3, 2), (q, key))


def test_half_inputs_are_computed_in_float32():
    q, key = _qk(d=4, h=3, w=3, dtype=torch.float32)
    out = ul.sapa_similarity(q.half(), key.half(), 3, 2, backend="cpu")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), sapa_similarity_reference(q.half().float(), key.half().float(), 3, 2),
                               rtol=1e-2, atol=1e-2)


def test_bad_input():
    q, key = _qk(d=3, h=3, w=4, s=2)
    with pytest.raises(ValueError, match="same dimension"):
        ul.sapa_similarity(q[:, :2], key, 3, 2)
    with pytest.raises(ValueError, match=r"exactly scale x.*\(6, 8\)"):
        ul.sapa_similarity(q[:, :, :5], key, 3, 2)
    with pytest.raises(ValueError, match="batch sizes differ"):
        ul.sapa_similarity(torch.cat([q, q]), key, 3, 2)
    with pytest.raises(ValueError, match="must be odd"):
        ul.sapa_similarity(q, key, 4, 2)


# ---------------------------------------------------------------- module


@pytest.mark.parametrize("variant,names", [
    ("B", {"norm_y", "norm_x", "q", "k"}),
    ("G", {"norm_y", "norm_x", "qy", "qx", "gate", "k"}),
    ("I", set()),
])
def test_module_variants_and_names(variant, names):
    dim = 8
    module = ul.SAPA(dim, variant=variant)
    assert {name.split(".")[0] for name, _ in module.named_parameters()} == names
    y, x = torch.randn(2, dim, 10, 12), torch.randn(2, dim, 5, 6)
    out = module(y, x)
    assert out.shape == (2, dim, 10, 12)
    torch.testing.assert_close(module.kernels(y, x).sum(1), torch.ones(2, 10, 12))


def test_module_defaults_and_init():
    module = ul.SAPA(32, 16)
    assert module.up_factor == 2 and module.up_kernel_size == 5 and module.embedding_dim == 64
    assert module.q.weight.shape == (64, 32) and module.k.weight.shape == (64, 16)
    assert module.q.bias is not None and torch.all(module.q.bias == 0)
    assert 0.01 < module.q.weight.std() < 0.03
    assert torch.all(module.norm_y.weight == 1) and torch.all(module.norm_y.bias == 0)
    assert ul.SAPA(4, qkv_bias=False).q.bias is None


def test_module_b_matches_a_plain_pytorch_implementation():
    torch.manual_seed(1)
    module = ul.SAPA(6, 5, up_factor=2, up_kernel_size=3, embedding_dim=4).double()
    for p in module.parameters():
        torch.nn.init.normal_(p)
    y, x = torch.randn(1, 6, 8, 6, dtype=torch.float64), torch.randn(1, 5, 4, 3, dtype=torch.float64)
    q = module.q(F.layer_norm(y.permute(0, 2, 3, 1), (6,), module.norm_y.weight, module.norm_y.bias))
    k = module.k(F.layer_norm(x.permute(0, 2, 3, 1), (5,), module.norm_x.weight, module.norm_x.bias))
    logits = sapa_similarity_reference(q.permute(0, 3, 1, 2), k.permute(0, 3, 1, 2), 3, 2)
    from upsamplelib.ops.carafe import carafe_reference

    expected = carafe_reference(x, F.softmax(logits, 1), 3, 2, 1)
    torch.testing.assert_close(module(y, x), expected)


def test_module_g_gate_uses_raw_x():
    torch.manual_seed(2)
    module = ul.SAPA(4, 4, up_kernel_size=3, embedding_dim=4, variant="G").double()
    for p in module.parameters():
        torch.nn.init.normal_(p)
    y, x = torch.randn(1, 4, 6, 6, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)
    x_last = x.permute(0, 2, 3, 1)
    gate = torch.sigmoid(module.gate(module.norm_x(x_last))).repeat_interleave(2, 1).repeat_interleave(2, 2)
    x_up = x_last.repeat_interleave(2, 1).repeat_interleave(2, 2)
    q = gate * module.qy(module.norm_y(y.permute(0, 2, 3, 1))) + (1 - gate) * module.qx(x_up)
    got_q, _ = module.queries_and_keys(y, x)
    torch.testing.assert_close(got_q, q.permute(0, 3, 1, 2))


def test_module_loads_official_state_dicts():
    b_state = {"norm_y.weight": torch.ones(32), "norm_y.bias": torch.zeros(32), "norm_x.weight": torch.ones(16),
               "norm_x.bias": torch.zeros(16), "q.weight": torch.randn(64, 32), "q.bias": torch.randn(64),
               "k.weight": torch.randn(64, 16), "k.bias": torch.randn(64)}
    ul.SAPA(32, 16).load_state_dict(b_state, strict=True)
    g_state = {k: v for k, v in b_state.items() if not k.startswith("q.")}
    g_state.update({"qy.weight": torch.randn(64, 32), "qy.bias": torch.randn(64), "qx.weight": torch.randn(64, 16),
                    "qx.bias": torch.randn(64), "gate.weight": torch.randn(1, 16), "gate.bias": torch.randn(1)})
    ul.SAPA(32, 16, variant="G").load_state_dict(g_state, strict=True)


def test_module_backward_and_bad_input():
    module = ul.SAPA(4, 6, up_kernel_size=3, embedding_dim=8)
    y = torch.randn(1, 4, 6, 8, requires_grad=True)
    x = torch.randn(1, 6, 3, 4, requires_grad=True)
    module(y, x).square().sum().backward()
    assert y.grad is not None and x.grad is not None and module.q.weight.grad is not None
    with pytest.raises(ValueError, match="needs dim_y == dim_x"):
        ul.SAPA(4, 6, variant="I")
    with pytest.raises(ValueError, match="unknown variant"):
        ul.SAPA(4, variant="X")
    with pytest.raises(ValueError, match="exactly up_factor x the size of x.*up_factor=2"):
        module(y[:, :, :5], x)
