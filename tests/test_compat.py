"""Compatibility with the original releases (issue 11): every variant and
checkpoint format of CARAFE (mmcv's CARAFEPack), SAPA (SAPA and SAPAExp)
and FADE (FADE_L2H, FADE_H2L, FADE-Lite, SemiShiftUp) loads and runs.

The state dicts below are written from the published descriptions of the
originals (names and shapes), not produced by the original code, and every
output is checked against a plain-PyTorch computation written here, which
shares no code with the library: windows are taken by shifting a
zero-padded map (no unfold), upsampling by ``repeat_interleave``.
"""

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import upsamplelib as ul
from conftest import KERNEL_BACKENDS, on
from upsamplelib import backend as machinery
from upsamplelib.ops.fade import H2L_NAMES

# ----------------------------------------------------------- plain PyTorch


def _up(t, s):
    return t.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)


def _window_slots(low, k):
    """For each window slot t = dy * k + dx, the low-res map shifted so that
    pixel (y, x) holds low[y + dy - r, x + dx - r] (0 outside the map)."""
    r = k // 2
    h, w = low.shape[2], low.shape[3]
    padded = F.pad(low, (r, r, r, r))
    return [padded[:, :, dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)]


def _reassemble(values, masks, k, s, group=1):
    """out[c, Y, X] = sum_t masks[g(c) * k * k + t, Y, X] * values[c, Y//s + dy_t, X//s + dx_t]."""
    n, c, h, w = values.shape
    per_group = c // group
    out = torch.zeros(n, c, s * h, s * w, dtype=values.dtype)
    for t, shifted in enumerate(_window_slots(values, k)):
        shifted = _up(shifted, s)
        for g in range(group):
            channels = slice(g * per_group, (g + 1) * per_group)
            out[:, channels] += masks[:, g * k * k + t].unsqueeze(1) * shifted[:, channels]
    return out


def _similarity(q, key, k, s):
    """logits[t, Y, X] = < q[:, Y, X], key[:, Y//s + dy_t, X//s + dx_t] > (0 outside the map)."""
    return torch.stack([(q * _up(shifted, s)).sum(dim=1) for shifted in _window_slots(key, k)], dim=1)


def _layer_norm(t, state, name):
    """LayerNorm over the channels of an NCHW map, eps 1e-5."""
    out = F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), state[f"{name}.weight"], state[f"{name}.bias"], 1e-5)
    return out.permute(0, 3, 1, 2)


def _linear(t, state, name):
    """A Linear over the channels of an NCHW map (bias if the state has one)."""
    out = torch.einsum("nchw,oc->nohw", t, state[f"{name}.weight"])
    bias = state.get(f"{name}.bias")
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _random_state(shapes, dtype=torch.float64):
    return {name: torch.randn(shape, dtype=dtype) for name, shape in shapes.items()}


def _shapes(module):
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


# ------------------------------------------------------------------ CARAFE


def _carafepack_shapes(channels, scale, up_kernel=5, up_group=1, encoder_kernel=3, compressed=64):
    """The state dict of mmcv's CARAFEPack(channels, scale_factor, up_kernel,
    up_group, encoder_kernel, encoder_dilation, compressed_channels)."""
    slots = scale * scale * up_group * up_kernel * up_kernel
    return {"channel_compressor.weight": (compressed, channels, 1, 1), "channel_compressor.bias": (compressed,),
            "content_encoder.weight": (slots, compressed, encoder_kernel, encoder_kernel),
            "content_encoder.bias": (slots,)}


def _carafepack_forward(state, x, scale, up_kernel, up_group, encoder_kernel, encoder_dilation):
    compressed = F.conv2d(x, state["channel_compressor.weight"], state["channel_compressor.bias"])
    logits = F.conv2d(compressed, state["content_encoder.weight"], state["content_encoder.bias"],
                      padding=(encoder_kernel - 1) * encoder_dilation // 2, dilation=encoder_dilation)
    logits = F.pixel_shuffle(logits, scale)
    n, slots, height, width = logits.shape
    area = up_kernel * up_kernel
    masks = F.softmax(logits.view(n, slots // area, area, height, width), dim=2).view(n, slots, height, width)
    return _reassemble(x, masks, up_kernel, scale, up_group)


def test_carafe_takes_mmcv_scale_factor():
    assert ul.CARAFE(16).scale == 2
    assert ul.CARAFE(16, scale_factor=3).scale == 3
    assert ul.CARAFE(16, 3).scale_factor == 3  # CARAFEPack(channels, scale_factor) positionally
    assert ul.CARAFE(16, scale=4, scale_factor=4).scale == 4
    module = ul.CARAFE(16, scale_factor=3, up_kernel=3, up_group=2)
    assert module.content_encoder.weight.shape == (3 * 3 * 2 * 3 * 3, 64, 3, 3)
    assert module(torch.randn(1, 16, 4, 5)).shape == (1, 16, 12, 15)
    with pytest.raises(ValueError, match="scale=2 and scale_factor=4 differ"):
        ul.CARAFE(16, scale=2, scale_factor=4)
    with pytest.raises(ValueError, match="scale_factor must be >= 1"):
        ul.CARAFE(16, scale_factor=0)
    with pytest.raises(TypeError, match="scale_factor must be an int"):
        ul.CARAFE(16, scale_factor=2.0)


@pytest.mark.parametrize("scale, up_kernel, up_group, encoder_kernel, dilation, compressed",
                         [(2, 5, 1, 3, 1, 64), (4, 3, 2, 5, 2, 16), (3, 1, 4, 1, 1, 8)])
def test_carafe_loads_carafepack_state_dicts_and_matches_them(scale, up_kernel, up_group, encoder_kernel, dilation,
                                                              compressed):
    torch.manual_seed(0)
    shapes = _carafepack_shapes(8, scale, up_kernel, up_group, encoder_kernel, compressed)
    module = ul.CARAFE(8, scale_factor=scale, up_kernel=up_kernel, up_group=up_group, encoder_kernel=encoder_kernel,
                       encoder_dilation=dilation, compressed_channels=compressed).double()
    assert _shapes(module) == shapes
    state = {name: 0.3 * t for name, t in _random_state(shapes).items()}
    module.load_state_dict(state, strict=True)
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(module(x), _carafepack_forward(state, x, scale, up_kernel, up_group, encoder_kernel,
                                                              dilation))


@pytest.mark.parametrize("group", [1, 2, 3, 4])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_carafe_call_in_mmcv_order_never_runs_silently(kernel_size, scale, group):
    """mmcv.ops.carafe(features, masks, kernel_size, group_size, scale_factor)
    called as ul.carafe(...) with the same positional arguments: refused with
    a message naming the order, unless group == scale, where the two orders
    are the same call (and the result is mmcv's)."""
    torch.manual_seed(1)
    x = torch.randn(1, 12, 3, 4, dtype=torch.float64)
    masks = torch.rand(1, group * kernel_size ** 2, scale * 3, scale * 4, dtype=torch.float64)
    if group == scale:
        torch.testing.assert_close(ul.carafe(x, masks, kernel_size, group, scale),
                                   _reassemble(x, masks, kernel_size, scale, group))
    else:
        with pytest.raises(ValueError, match=r"mmcv's order.*group_size, scale_factor.*scale, group"):
            ul.carafe(x, masks, kernel_size, group, scale)
        # The call in ul's order with the same tensors works.
        torch.testing.assert_close(ul.carafe(x, masks, kernel_size, scale, group),
                                   _reassemble(x, masks, kernel_size, scale, group))


def test_carafe_mmcv_order_is_named_before_any_shape_is_blamed():
    # 3 channels in 3 groups, scale 2: in mmcv's order group=2 would not divide the channels.
    x, masks = torch.randn(1, 3, 2, 2), torch.rand(1, 3 * 9, 4, 4)
    with pytest.raises(ValueError, match=r"mmcv's order.*carafe\(x, masks, 3, 2, 3\)"):
        ul.carafe(x, masks, 3, 3, 2)
    # A malformed call that fits neither order still mentions the order.
    with pytest.raises(ValueError, match="not mmcv's"):
        ul.carafe(x, torch.rand(1, 5, 4, 4), 3, 2, 3)
    # mmcv's keywords are not ul's: a clear TypeError, nothing runs.
    with pytest.raises(TypeError, match="group_size"):
        ul.carafe(x, masks, 3, group_size=3, scale_factor=2)


# -------------------------------------------------------------------- SAPA


def _sapa_shapes(dim_y, dim_x, embedding_dim=64, q_mode="encoder_only", v_embed=False, out_dim=None,
                 qkv_bias=True):
    """The state dict of the authors' SAPAExp(dim_y, dim_x, out_dim, q_mode,
    v_embed, up_factor, up_kernel_size, embedding_dim, qkv_bias), which for
    q_mode 'encoder_only' and 'gate' is also SAPA-B's and SAPA-G's."""
    out_dim = dim_x if out_dim is None else out_dim
    shapes = {"norm_y.weight": (dim_y,), "norm_y.bias": (dim_y,), "norm_x.weight": (dim_x,), "norm_x.bias": (dim_x,)}
    linears = {"k": (embedding_dim, dim_x)}
    if q_mode == "encoder_only":
        linears["q"] = (embedding_dim, dim_y)
    elif q_mode == "cat":
        linears["q"] = (embedding_dim, dim_y + dim_x)
    else:
        linears.update(qy=(embedding_dim, dim_y), qx=(embedding_dim, dim_x), gate=(1, dim_x))
    if v_embed or out_dim != dim_x:
        linears["v"] = (out_dim, dim_x)
    for name, shape in linears.items():
        shapes[f"{name}.weight"] = shape
        if qkv_bias:
            shapes[f"{name}.bias"] = (shape[0],)
    return shapes


def _sapa_forward(state, y, x, q_mode, k, s):
    y_normed, x_normed = _layer_norm(y, state, "norm_y"), _layer_norm(x, state, "norm_x")
    key = _linear(x_normed, state, "k")
    if q_mode == "encoder_only":
        q = _linear(y_normed, state, "q")
    elif q_mode == "cat":
        q = _linear(torch.cat([y_normed, _up(x, s)], dim=1), state, "q")  # raw x
    else:
        gate = _up(torch.sigmoid(_linear(x_normed, state, "gate")), s)
        q = gate * _linear(y_normed, state, "qy") + (1 - gate) * _linear(_up(x, s), state, "qx")
    values = _linear(x_normed, state, "v") if "v.weight" in state else x
    return _reassemble(values, F.softmax(_similarity(q, key, k, s), dim=1), k, s)


SAPAEXP_CONFIGS = [
    dict(q_mode="encoder_only"),
    dict(q_mode="gate"),
    dict(q_mode="cat"),
    dict(q_mode="encoder_only", v_embed=True),
    dict(q_mode="gate", out_dim=7),
    dict(q_mode="cat", v_embed=True, out_dim=3),
    dict(q_mode="cat", v_embed=True, qkv_bias=False),
    dict(q_mode="gate", out_dim=5, qkv_bias=False),
]


@pytest.mark.parametrize("config", SAPAEXP_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sapa_takes_sapaexp_keywords_names_and_state_dicts(config):
    torch.manual_seed(2)
    dim_y, dim_x, dim, k, s = 6, 5, 4, 3, 2
    shapes = _sapa_shapes(dim_y, dim_x, dim, **config)
    module = ul.SAPA(dim_y, dim_x, up_factor=s, up_kernel_size=k, embedding_dim=dim, **config).double()
    assert _shapes(module) == shapes
    state = _random_state(shapes)
    module.load_state_dict(state, strict=True)
    y, x = torch.randn(2, dim_y, 8, 6, dtype=torch.float64), torch.randn(2, dim_x, 4, 3, dtype=torch.float64)
    out = module(y, x)
    assert out.shape == (2, config.get("out_dim", dim_x), 8, 6)
    torch.testing.assert_close(out, _sapa_forward(state, y, x, config["q_mode"], k, s))
    # Gradients reach the inputs and every parameter.
    y.requires_grad_(True)
    x.requires_grad_(True)
    module(y, x).square().sum().backward()
    assert y.grad is not None and x.grad is not None
    assert all(p.grad is not None for p in module.parameters())


def test_sapa_cat_at_scale_three_and_default_sizes():
    torch.manual_seed(3)
    module = ul.SAPA(8, 12, up_factor=3, q_mode="cat", out_dim=16).double()
    shapes = _sapa_shapes(8, 12, 64, q_mode="cat", out_dim=16)
    assert _shapes(module) == shapes and shapes["q.weight"] == (64, 20) and shapes["v.weight"] == (16, 12)
    state = {name: 0.2 * t for name, t in _random_state(shapes).items()}
    module.load_state_dict(state, strict=True)
    y, x = torch.randn(1, 8, 9, 12, dtype=torch.float64), torch.randn(1, 12, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(module(y, x), _sapa_forward(state, y, x, "cat", 5, 3))


def test_sapa_variant_and_q_mode():
    assert (ul.SAPA(4).variant, ul.SAPA(4).q_mode) == ("B", "encoder_only")
    assert ul.SAPA(4, variant="G").q_mode == "gate"
    assert ul.SAPA(4, q_mode="gate").variant == "G"
    assert ul.SAPA(4, q_mode="cat").variant is None
    assert ul.SAPA(4, variant="I").q_mode is None
    assert ul.SAPA(4, variant="B", q_mode="encoder_only").variant == "B"
    assert ul.SAPA(4, variant="G", q_mode="gate").variant == "G"
    # The SPEC's positional order is kept: up_factor third, variant seventh.
    module = ul.SAPA(4, 6, 3, 3, 8, False, "G")
    assert (module.up_factor, module.up_kernel_size, module.embedding_dim, module.variant) == (3, 3, 8, "G")
    assert module.qy.bias is None and not hasattr(module, "v")
    with pytest.raises(ValueError, match="contradict.*variant='B' is q_mode='encoder_only'"):
        ul.SAPA(4, variant="B", q_mode="gate")
    with pytest.raises(ValueError, match="contradict"):
        ul.SAPA(4, variant="G", q_mode="cat")
    with pytest.raises(ValueError, match="contradict.*'I' has no query projection"):
        ul.SAPA(4, variant="I", q_mode="encoder_only")
    with pytest.raises(ValueError, match="unknown q_mode 'concat'"):
        ul.SAPA(4, q_mode="concat")
    with pytest.raises(ValueError, match="unknown variant 'C'"):
        ul.SAPA(4, variant="C")
    with pytest.raises(ValueError, match="variant 'I' has no parameters"):
        ul.SAPA(4, variant="I", v_embed=True)
    with pytest.raises(ValueError, match="variant 'I' has no parameters"):
        ul.SAPA(4, variant="I", out_dim=8)
    with pytest.raises(TypeError, match="v_embed must be True or False"):
        ul.SAPA(4, v_embed=1)
    with pytest.raises(ValueError, match="out_dim must be >= 1"):
        ul.SAPA(4, out_dim=0)
    # SAPAExp's positional order (dim_y, dim_x, out_dim, q_mode, ...) is told apart.
    with pytest.raises(TypeError, match="SAPAExp's positional order"):
        ul.SAPA(4, 6, 6, "gate")
    with pytest.raises(TypeError, match="SAPAExp's positional order"):
        ul.SAPA(4, 6, 6, 5, True)
    with pytest.raises(TypeError, match="SAPAExp's positional order"):
        ul.SAPA(4, 6, None)  # SAPAExp(dim_y, dim_x, out_dim=None)
    with pytest.raises(TypeError):
        ul.SAPA(4, 6, 2, 5, 64, True, "B", 8)  # out_dim is keyword-only


def test_sapa_input_checks_with_a_value_projection():
    module = ul.SAPA(4, 6, q_mode="cat", out_dim=3, up_kernel_size=3, embedding_dim=8)
    y, x = torch.randn(1, 4, 6, 8), torch.randn(1, 6, 3, 4)
    assert module(y, x).shape == (1, 3, 6, 8)
    with pytest.raises(ValueError, match="x has 3 channels.*built for 6"):
        module(y, torch.randn(1, 3, 3, 4))
    with pytest.raises(ValueError, match="look swapped"):
        module(x, y)
    with pytest.raises(TypeError, match="module's parameters are torch.float32"):
        module(y.double(), x.double())


# -------------------------------------------------------------------- FADE


def _fade_shapes(channels_en, channels_de=None, up_kernel_size=5, embedding_dim=64, kernel_size=3, lite=False,
                 gate=True, names="L2H"):
    """The state dict of FADE_L2H (or FADE_H2L with names="H2L"), FADE-Lite
    (lite=True) or SemiShiftUp (gate=False)."""
    channels_de = channels_en if channels_de is None else channels_de
    logits = up_kernel_size ** 2
    compressed = logits if lite else embedding_dim
    encoder = (logits, 1 if lite else compressed, kernel_size, kernel_size)
    shapes = {"ker_generator.compressor_en.weight": (compressed, channels_en, 1, 1),
              "ker_generator.compressor_en.bias": (compressed,),
              "ker_generator.compressor_de.weight": (compressed, channels_de, 1, 1),
              "ker_generator.content_encoder.weight": encoder,
              "ker_generator.content_encoder.bias": (logits,)}
    if names == "H2L":
        shapes = {"kernel_generator.conv1_en.weight": (compressed, channels_en, 1, 1),
                  "kernel_generator.conv1_en.bias": (compressed,),
                  "kernel_generator.conv1_de.weight": (compressed, channels_de, 1, 1),
                  "kernel_generator.conv2_kernels": encoder,
                  "kernel_generator.conv2_bias": (logits,)}
    if gate:
        shapes.update({"gate_generator.conv.weight": (1, channels_de, 1, 1), "gate_generator.conv.bias": (1,)})
    return shapes


def _l2h(state):
    """An H2L state dict under the L2H names (the test's own table)."""
    table = {"kernel_generator.conv1_en.weight": "ker_generator.compressor_en.weight",
             "kernel_generator.conv1_en.bias": "ker_generator.compressor_en.bias",
             "kernel_generator.conv1_de.weight": "ker_generator.compressor_de.weight",
             "kernel_generator.conv2_kernels": "ker_generator.content_encoder.weight",
             "kernel_generator.conv2_bias": "ker_generator.content_encoder.bias"}
    return {table.get(name, name): t for name, t in state.items()}


def _fade_forward(state, en, de, up_kernel_size, scale, lite=False):
    state = _l2h(state)
    weight, bias = state["ker_generator.content_encoder.weight"], state["ker_generator.content_encoder.bias"]
    groups = weight.shape[0] if lite else 1
    pad = weight.shape[2] // 2
    E = F.conv2d(en, state["ker_generator.compressor_en.weight"], state["ker_generator.compressor_en.bias"])
    D = F.conv2d(de, state["ker_generator.compressor_de.weight"])
    logits = (F.conv2d(E, weight, bias, padding=pad, groups=groups)
              + _up(F.conv2d(D, weight, bias, padding=pad, groups=groups), scale))
    upsampled = _reassemble(de, F.softmax(logits, dim=1), up_kernel_size, scale)
    if "gate_generator.conv.weight" not in state:
        return upsampled
    gate = torch.sigmoid(_up(F.conv2d(de, state["gate_generator.conv.weight"], state["gate_generator.conv.bias"]),
                             scale))
    return gate * en + (1 - gate) * upsampled


FADE_CONFIGS = [
    dict(),
    dict(lite=True),
    dict(gate=False),
    dict(gate=False, lite=True),
    dict(gate=False, channels_de=3),
]


def _fade_case(config):
    config = dict(config)
    channels_de = config.pop("channels_de", 6)
    kwargs = dict(up_kernel_size=3, embedding_dim=5, **config)
    return channels_de, kwargs


@pytest.mark.parametrize("names", ["L2H", "H2L"])
@pytest.mark.parametrize("config", FADE_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "FADE")
def test_fade_loads_l2h_and_h2l_state_dicts_and_matches_them(config, names):
    torch.manual_seed(4)
    channels_de, kwargs = _fade_case(config)
    module = ul.FADE(6, channels_de, scale=2, **kwargs).double()
    assert _shapes(module) == _fade_shapes(6, channels_de, **kwargs)
    state = {name: 0.3 * t for name, t in _random_state(_fade_shapes(6, channels_de, names=names, **kwargs)).items()}
    given = dict(state)
    module.load_state_dict(state, strict=True)
    assert state.keys() == given.keys()  # the caller's dictionary is left as it was
    for name, t in _l2h(state).items():
        assert torch.equal(module.state_dict()[name], t), name
    assert set(module.state_dict()) == set(_fade_shapes(6, channels_de, **kwargs))  # written with L2H names
    en, de = torch.randn(2, 6, 8, 6, dtype=torch.float64), torch.randn(2, channels_de, 4, 3, dtype=torch.float64)
    out = module(en, de)
    assert out.shape == (2, channels_de, 8, 6)
    torch.testing.assert_close(out, _fade_forward(state, en, de, 3, 2, lite=kwargs.get("lite", False)))


def test_fade_h2l_at_default_sizes_scale_three_and_inside_a_model():
    torch.manual_seed(5)
    shapes = _fade_shapes(16, names="H2L")
    assert shapes["kernel_generator.conv2_kernels"] == (25, 64, 3, 3) and shapes["kernel_generator.conv2_bias"] == (25,)
    model = nn.Sequential()
    model.add_module("up", ul.FADE(16, scale=3).double())
    state = {f"up.{name}": 0.1 * t for name, t in _random_state(shapes).items()}
    model.load_state_dict(state, strict=True)
    assert set(model.state_dict()) == {f"up.{name}" for name in _fade_shapes(16)}
    en, de = torch.randn(1, 16, 9, 12, dtype=torch.float64), torch.randn(1, 16, 3, 4, dtype=torch.float64)
    plain = {name[len("up."):]: t for name, t in state.items()}
    torch.testing.assert_close(model.up(en, de), _fade_forward(plain, en, de, 5, 3))
    # The L2H state dict written by state_dict() loads back into a fresh module.
    fresh = ul.FADE(16, scale=3).double()
    fresh.load_state_dict(model.up.state_dict(), strict=True)
    torch.testing.assert_close(fresh(en, de), model.up(en, de))


def test_fade_h2l_name_mapping_is_the_documented_one():
    assert H2L_NAMES == {
        "kernel_generator.conv1_en.weight": "ker_generator.compressor_en.weight",
        "kernel_generator.conv1_en.bias": "ker_generator.compressor_en.bias",
        "kernel_generator.conv1_de.weight": "ker_generator.compressor_de.weight",
        "kernel_generator.conv2_kernels": "ker_generator.content_encoder.weight",
        "kernel_generator.conv2_bias": "ker_generator.content_encoder.bias",
    }


def test_fade_state_dict_errors_stay_errors():
    module = ul.FADE(6, up_kernel_size=3, embedding_dim=5)
    state = _random_state(_fade_shapes(6, up_kernel_size=3, embedding_dim=5, names="H2L"), torch.float32)
    both = dict(state, **{"ker_generator.content_encoder.bias": torch.randn(9)})
    with pytest.raises(RuntimeError, match="FADE_H2L's name.*FADE_L2H's name"):
        module.load_state_dict(both, strict=True)
    with pytest.raises(RuntimeError, match="size mismatch for ker_generator.content_encoder.weight"):
        module.load_state_dict(dict(state, **{"kernel_generator.conv2_kernels": torch.randn(9, 4, 3, 3)}))
    with pytest.raises(RuntimeError, match="Missing key.*gate_generator"):
        module.load_state_dict({k: v for k, v in state.items() if not k.startswith("gate")}, strict=True)
    semishift = ul.FADE(6, up_kernel_size=3, embedding_dim=5, gate=False)
    with pytest.raises(RuntimeError, match="Unexpected key.*gate_generator"):
        semishift.load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key.*conv1_de.bias"):
        module.load_state_dict(dict(state, **{"kernel_generator.conv1_de.bias": torch.randn(5)}), strict=True)


def test_semishiftup_is_fade_without_the_gate():
    torch.manual_seed(6)
    module = ul.FADE(6, 4, gate=False, up_kernel_size=3, embedding_dim=5)
    assert not module.gated and not hasattr(module, "gate_generator")
    assert all(name.startswith("ker_generator.") for name in module.state_dict())
    en, de = torch.randn(1, 6, 6, 8), torch.randn(1, 4, 3, 4)
    out = module(en, de)
    torch.testing.assert_close(out, ul.carafe(de, module.kernels(en, de), 3, 2))
    assert torch.equal(module.gate(de), torch.zeros(1, 1, 6, 8))
    en.requires_grad_(True)
    de.requires_grad_(True)
    module(en, de).sum().backward()
    assert en.grad is not None and de.grad is not None
    with pytest.raises(TypeError, match="gate must be True or False"):
        ul.FADE(6, gate=1)
    with pytest.raises(TypeError, match="gate must be True or False"):
        ul.FADE(6, gate="semishift")
    with pytest.raises(ValueError, match="or use gate=False"):
        ul.FADE(6, 4)
    with pytest.raises(ValueError, match="en has 4 channels.*built for 6"):
        module(torch.randn(1, 4, 6, 8), de)


# -------------------------------------------------------- torch.compile, trace


MODULES = {
    "sapa-cat-v": lambda: (ul.SAPA(6, 5, q_mode="cat", out_dim=7, up_kernel_size=3, embedding_dim=4),
                           (torch.randn(1, 6, 8, 6), torch.randn(1, 5, 4, 3))),
    "sapa-gate-v": lambda: (ul.SAPA(6, 5, q_mode="gate", v_embed=True, up_kernel_size=3, embedding_dim=4),
                            (torch.randn(1, 6, 8, 6), torch.randn(1, 5, 4, 3))),
    "semishiftup": lambda: (ul.FADE(6, 4, gate=False, up_kernel_size=3, embedding_dim=5),
                            (torch.randn(1, 6, 8, 6), torch.randn(1, 4, 4, 3))),
    "carafe-scale-factor": lambda: (ul.CARAFE(6, scale_factor=3, up_kernel=3, compressed_channels=8),
                                    (torch.randn(1, 6, 4, 3),)),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_new_options_compile_without_graph_breaks_and_trace(name):
    torch.manual_seed(7)
    module, inputs = MODULES[name]()
    expected = module(*inputs)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*inputs), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace is deprecated in recent torch
        traced = torch.jit.trace(module, inputs, check_trace=False)
    torch.testing.assert_close(traced(*inputs), expected)


# -------------------------------------------------------------------- init


def _xavier_uniform_std(shape):
    """Xavier-uniform (gain 1) draws from U(-a, a), a = sqrt(6 / (fan_in +
    fan_out)), so its std is a / sqrt(3) = sqrt(2 / (fan_in + fan_out)),
    with fan_in = shape[1] * receptive field, fan_out = shape[0] * receptive field."""
    receptive = math.prod(shape[2:])
    return math.sqrt(2.0 / (shape[1] * receptive + shape[0] * receptive))


def _pooled(make, min_samples=20000):
    """Every parameter's values over enough fresh modules for at least
    ``min_samples`` values of each weight (the sample std of a uniform or
    normal draw is then within about 0.5 % of the true one)."""
    torch.manual_seed(8)
    first = make()
    smallest = min(p.numel() for p in first.parameters() if p.dim() >= 2)
    draws = max(1, math.ceil(min_samples / smallest))
    values = {name: [p.detach().flatten()] for name, p in first.named_parameters()}
    shapes = {name: tuple(p.shape) for name, p in first.named_parameters()}
    for _ in range(draws - 1):
        for name, p in make().named_parameters():
            values[name].append(p.detach().flatten())
    return {name: torch.cat(v) for name, v in values.items()}, shapes


def _assert_std(values, expected, name, tolerance=0.03):
    got = values.std().item()
    assert abs(got / expected - 1) < tolerance, f"{name}: std {got:.6g}, expected {expected:.6g}"


@pytest.mark.parametrize("kwargs", [dict(), dict(lite=True), dict(gate=False), dict(lite=True, up_kernel_size=3)],
                         ids=["FADE", "FADE-Lite", "SemiShiftUp", "FADE-Lite-k3"])
def test_fade_init_is_the_originals_xavier_uniform(kwargs):
    values, shapes = _pooled(lambda: ul.FADE(64, **kwargs))
    for name, v in values.items():
        if name.endswith(".bias"):
            assert torch.all(v == 0), name
            continue
        expected = _xavier_uniform_std(shapes[name])
        _assert_std(v, expected, name)
        assert v.abs().max() <= expected * math.sqrt(3) + 1e-7, name  # uniform on [-a, a]
        assert v.abs().max() > 0.98 * expected * math.sqrt(3), name


def test_carafe_init_is_mmcvs():
    """CARAFEPack: Xavier-uniform convolutions with zero bias, then the
    content encoder's weight normal(std=0.001)."""
    values, shapes = _pooled(lambda: ul.CARAFE(64, compressed_channels=64))
    assert torch.all(values["channel_compressor.bias"] == 0) and torch.all(values["content_encoder.bias"] == 0)
    _assert_std(values["channel_compressor.weight"], _xavier_uniform_std(shapes["channel_compressor.weight"]),
                "channel_compressor.weight")
    _assert_std(values["content_encoder.weight"], 0.001, "content_encoder.weight")
    assert abs(values["content_encoder.weight"].mean().item()) < 3e-5


@pytest.mark.parametrize("kwargs", [dict(), dict(variant="G"), dict(q_mode="cat", v_embed=True),
                                    dict(q_mode="gate", out_dim=32)], ids=["B", "G", "cat-v", "gate-out"])
def test_sapa_init_is_the_originals(kwargs):
    """Linear: trunc-normal std 0.02 (cut at +-2, which std 0.02 never
    reaches), zero bias; LayerNorm weight 1, bias 0."""
    values, _ = _pooled(lambda: ul.SAPA(48, 64, **kwargs))
    for name, v in values.items():
        if name.startswith("norm_"):
            assert torch.all(v == (1 if name.endswith(".weight") else 0)), name
        elif name.endswith(".bias"):
            assert torch.all(v == 0), name
        else:
            _assert_std(v, 0.02, name)
            assert abs(v.mean().item()) < 0.02 * 0.03, name


# ------------------------------------------- the originals' limits, not ours


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_carafe_has_no_limit_on_group_times_window(backend):
    """mmcv's fast CARAFE silently needs G * k**2 <= 384; here 4 * 11**2 = 484 and 16 * 5**2 = 400."""
    torch.manual_seed(9)
    for group, k in [(4, 11), (16, 5)]:
        x = torch.randn(1, 16, 6, 5, dtype=torch.float64)
        masks = F.softmax(torch.randn(1, group, k * k, 12, 10, dtype=torch.float64), dim=2).view(1, -1, 12, 10)
        torch.testing.assert_close(on(backend, ul.carafe)(x, masks, k, 2, group), _reassemble(x, masks, k, 2, group))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_sapa_backward_has_no_channel_limit(backend):
    """SAPA's CUDA backward is limited to <= 1024 value channels; here 1040,
    on the Numba CPU loops and the Numba-CUDA kernels (GPU or simulator)."""
    torch.manual_seed(10)
    device = "cuda" if backend == "cuda" and not machinery.SIMULATOR else "cpu"
    module = ul.SAPA(4, 1040, up_kernel_size=3, embedding_dim=4).double()
    y = torch.randn(1, 4, 4, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 1040, 2, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 1040, 4, 6, dtype=torch.float64)
    expected = torch.autograd.grad(_sapa_forward(module.state_dict(), y, x, "encoder_only", 3, 2), (y, x), grad)
    module.backend = backend
    module.to(device)
    got = torch.autograd.grad(module(y.to(device), x.to(device)), (y, x), grad.to(device))
    torch.testing.assert_close(got, expected)
