"""SAPA: similarity-aware point affiliation (Lu et al., NeurIPS 2022).

Each upsampled point ``(Y, X)`` compares its high-res *query* (from the
encoder feature ``y``) with the *keys* of the k x k low-res window around
``(Y//s, X//s)`` (from the decoder feature ``x``); a softmax of those
similarities is the kernel with which CARAFE reassembles ``x``. Inside a
region all neighbours look alike (smooth kernels); at a boundary the query
picks the side it belongs to (sharp kernels).

``ul.sapa_similarity(q, key, kernel_size, scale)``::

    logits[n, t, Y, X] = < q[n, :, Y, X], key[n, :, Y//s + dy_t, X//s + dx_t] >

no 1/sqrt(d); an out-of-map neighbour gets logit 0 (not -inf: it still takes
part in the softmax, with value 0). ``ul.SAPA`` is the module (variants B,
G, I) with the official parameter names.

The similarity is exactly CARAFE's mask gradient with the queries in the
role of the output gradient, and its backward is CARAFE's reassembly (for
the queries) and CARAFE's feature gradient (for the keys). So this file
reuses the kernels of ``carafe.py`` and adds no new index math.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.utils.flop_counter import register_flop_formula

from ..backend import forward_tangents, operator, reference_for_empty_batch, resolve_backend, with_tangent
from ..layout import kernel_layout
from ..validation import (
    check_batched_map,
    check_bool,
    check_feature_map,
    check_guide_pair,
    check_module_input,
    check_odd_kernel_size,
    check_positive_int,
    check_same_batch,
    check_same_device,
    check_upsampled_size,
    in_dtype,
    kernel_dtype,
    shape_str,
)
from .carafe import (
    carafe,
    inside_map,
    save_inputs,
    window_flops,
    window_products,
    window_products_derivative,
)

# --------------------------------------------------------------------------
# Reference (backend="torch")
# --------------------------------------------------------------------------


def sapa_similarity_reference(q, key, kernel_size, scale):
    """The similarity in plain PyTorch: unfold the key windows, repeat each
    for its s x s query points, dot product over channels. Out-of-map
    neighbours get logit 0 without a product (as in the kernels: a NaN
    query must not leak into them)."""
    n, dim, height, width = key.shape
    area = kernel_size * kernel_size
    windows = F.unfold(key, kernel_size, padding=(kernel_size - 1) // 2).view(n, dim, area, height, width)
    windows = windows.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)
    logits = (q.unsqueeze(2) * windows).sum(dim=1)
    inside = inside_map(kernel_size, scale, height, width, q.device)
    return torch.where(inside, logits, torch.zeros((), dtype=logits.dtype, device=logits.device))


# --------------------------------------------------------------------------
# PyTorch custom operator: torch.ops.upsamplelib.sapa_similarity. It is
# CARAFE's window product with group 1 (every query channel meets the same
# key channel), and it shares that op's derivative: the query gradient is a
# reassembly of the keys, the key gradient a window gather of the queries.
# --------------------------------------------------------------------------


@operator("sapa_similarity")
def sapa_similarity_op(q: torch.Tensor, key: torch.Tensor, kernel_size: int, scale: int, group: int,
                       backend: str) -> torch.Tensor:
    """SAPA's similarity logits on the Numba kernels (arguments checked;
    ``group`` is always 1, kept so the op shares CARAFE's derivative)."""
    return window_products(backend, q.contiguous(), key.contiguous(), kernel_size, scale, q.shape[1] // group)


@sapa_similarity_op.register_fake
def _(q, key, kernel_size, scale, group, backend):
    n, _, height, width = q.shape
    return q.new_empty((n, group * kernel_size * kernel_size, height, width))


sapa_similarity_op.register_autograd(window_products_derivative, setup_context=save_inputs)


@register_flop_formula(torch.ops.upsamplelib.sapa_similarity)
def _(q_shape, key_shape, kernel_size, *args, out_shape=None, **kwargs):
    return window_flops(q_shape, kernel_size)


def sapa_similarity(q, key, kernel_size, scale, backend=None):
    """SAPA's similarity logits (see the module docstring).

    Args:
        q: (N, d, s*h, s*w) queries (high resolution).
        key: (N, d, h, w) keys (low resolution).
        kernel_size: odd window size k.
        scale: integer factor s.
        backend: None/"auto", "cuda", "cpu" or "torch".

    Returns:
        (N, k*k, s*h, s*w) logits, dtype ``torch.promote_types(q.dtype,
        key.dtype)``; differentiable with respect to ``q`` and ``key``, to any order.
    """
    op = "sapa_similarity"
    check_feature_map(q, "q", op)
    check_feature_map(key, "key", op)
    kernel_size = check_odd_kernel_size(kernel_size, "kernel_size", op)
    scale = check_positive_int(scale, "scale", op)
    check_same_batch(q, "q", key, "key", op)
    if q.shape[1] != key.shape[1]:
        raise ValueError(
            f"{op}: query and key embeddings must have the same dimension; got q {shape_str(q)} "
            f"({q.shape[1]} channels) and key {shape_str(key)} ({key.shape[1]} channels)"
        )
    check_upsampled_size(q, "q", key, "key", scale, op)
    check_same_device(q, "q", key, "key", op)
    backend = reference_for_empty_batch(resolve_backend(backend, [q, key], op), q.shape[0])
    if backend != "torch" and (split := forward_tangents(q, key)) is not None:
        (q, key), (dq, dkey) = split
        return with_tangent(sapa_similarity(q, key, kernel_size, scale, backend),
                            [sapa_similarity(dq, key, kernel_size, scale, backend) if dq is not None else None,
                             sapa_similarity(q, dkey, kernel_size, scale, backend) if dkey is not None else None])
    result_dtype = torch.promote_types(q.dtype, key.dtype)
    compute_dtype = kernel_dtype(result_dtype)
    q, key = in_dtype(q, compute_dtype), in_dtype(key, compute_dtype)
    if backend == "torch":
        logits = sapa_similarity_reference(q, key, kernel_size, scale)
    else:
        logits = sapa_similarity_op(kernel_layout(q), kernel_layout(key), kernel_size, scale, 1, backend)
    return in_dtype(logits, result_dtype)


# --------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------

VARIANTS = ("B", "G", "I")

#: SAPAExp's ``q_mode`` values and the variant each one is (``"cat"`` is
#: not one of the paper's lettered variants).
Q_MODES = {"encoder_only": "B", "gate": "G", "cat": None}


def _channels_last(t):
    return t.permute(0, 2, 3, 1)


def _channels_first(t):
    return t.permute(0, 3, 1, 2)


def _resolve_query_mode(variant, q_mode):
    """(variant, q_mode) from what the caller gave: either one, both when
    they agree, or neither (SAPA-B). ``q_mode`` is None for SAPA-I and
    ``variant`` None for ``q_mode="cat"``."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"SAPA: unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if q_mode is not None and q_mode not in Q_MODES:
        raise ValueError(f"SAPA: unknown q_mode {q_mode!r}; expected one of {', '.join(map(repr, Q_MODES))}")
    if variant is None and q_mode is None:
        return "B", "encoder_only"
    if q_mode is None:
        return variant, {"B": "encoder_only", "G": "gate", "I": None}[variant]
    if variant is not None and Q_MODES[q_mode] != variant:
        same = {letter: mode for mode, letter in Q_MODES.items() if letter}
        meaning = (f"variant={variant!r} is q_mode={same[variant]!r}" if variant in same
                   else "variant 'I' has no query projection, so no q_mode")
        raise ValueError(f"SAPA: variant={variant!r} and q_mode={q_mode!r} contradict each other ({meaning}); "
                         f"give one of them")
    return Q_MODES[q_mode], q_mode


class SAPA(nn.Module):
    """The SAPA upsampler: ``forward(y, x)`` upsamples the decoder feature
    ``x: (N, dim_x, h, w)`` by ``up_factor``, guided by the encoder feature
    ``y: (N, dim_y, s*h, s*w)``. A drop-in replacement for
    ``F.interpolate(x, scale_factor=s)`` in a decoder with skip connections.

    Variants (``variant=``, or SAPAExp's ``q_mode=``):

    * ``"B"`` = ``q_mode="encoder_only"`` (the default): ``q = q(LN(y))``,
      ``key = k(LN(x))``; parameters ``norm_y``, ``norm_x``, ``q``, ``k``.
    * ``"G"`` = ``q_mode="gate"`` (gated, best in the paper):
      ``g = up(sigmoid(gate(LN(x))))``, ``q = g * qy(LN(y)) + (1 - g) * qx(up(x))``
      with ``up`` nearest and raw ``x`` in the second term; parameters
      ``norm_y``, ``norm_x``, ``qy``, ``qx``, ``gate``, ``k``.
    * ``q_mode="cat"`` (SAPAExp): ``q = q([LN(y), up(x)])``, the
      concatenation over channels with raw ``x``, so ``q.weight`` is
      ``(embedding_dim, dim_y + dim_x)``; parameters ``norm_y``, ``norm_x``,
      ``q``, ``k``. ``variant`` is None.
    * ``"I"``: no parameters, ``q = LN(y)``, ``key = LN(x)``; needs
      ``dim_y == dim_x``.

    Values: the raw ``x``; with ``v_embed=True`` or ``out_dim != dim_x``
    (SAPAExp), a projection ``v = Linear(dim_x -> out_dim)`` of ``LN(x)``,
    and the output has ``out_dim`` channels.

    The positional order is this library's (``dim_y, dim_x, up_factor,
    up_kernel_size, embedding_dim, qkv_bias, variant``); SAPAExp's
    ``out_dim``, ``q_mode`` and ``v_embed`` come after it in SAPAExp's
    order and are keyword-only (``SAPAExp(dim_y, dim_x, out_dim, q_mode,
    ...)`` positionally would put ``out_dim`` in ``up_factor``). A
    contradicting ``variant`` and ``q_mode`` raise ``ValueError``; left
    at None (their defaults) each follows the other, and SAPA-B when both are.

    LayerNorms are over channels (eps 1e-5). Init as the originals: Linear
    trunc-normal std 0.02 with zero bias, LayerNorm weight 1 and bias 0.
    The attribute ``backend`` (default None: by device) selects the backend
    of the similarity and the reassembly, e.g. ``module.backend = "torch"``.
    """

    def __init__(self, dim_y, dim_x=None, up_factor=2, up_kernel_size=5, embedding_dim=64, qkv_bias=True,
                 variant=None, *, out_dim=None, q_mode=None, v_embed=False):
        super().__init__()
        if up_factor is None or isinstance(up_kernel_size, str) or isinstance(embedding_dim, bool):
            raise TypeError(
                f"SAPA: up_factor={up_factor!r}, up_kernel_size={up_kernel_size!r}, embedding_dim={embedding_dim!r}: "
                "this looks like "
                "SAPAExp's positional order (dim_y, dim_x, out_dim, q_mode, v_embed, ...). ul.SAPA's positional "
                "order is (dim_y, dim_x, up_factor, up_kernel_size, embedding_dim, qkv_bias, variant); pass "
                "out_dim=, q_mode= and v_embed= by keyword")
        dim_x = dim_y if dim_x is None else dim_x
        check_positive_int(dim_y, "dim_y", "SAPA")
        check_positive_int(dim_x, "dim_x", "SAPA")
        out_dim = dim_x if out_dim is None else check_positive_int(out_dim, "out_dim", "SAPA")
        check_bool(v_embed, "v_embed", "SAPA")
        variant, q_mode = _resolve_query_mode(variant, q_mode)
        value_projection = v_embed or out_dim != dim_x
        if variant == "I" and dim_y != dim_x:
            raise ValueError(
                f"SAPA: variant 'I' compares LN(y) with LN(x) directly, so it needs dim_y == dim_x; got "
                f"dim_y={dim_y}, dim_x={dim_x}. Use variant 'B' or 'G' (they project both to embedding_dim)."
            )
        if variant == "I" and value_projection:
            raise ValueError(f"SAPA: variant 'I' has no parameters, so no value projection: v_embed={v_embed}, "
                             f"out_dim={out_dim} (dim_x={dim_x}) need variant 'B' or 'G' or a q_mode")
        self.dim_y, self.dim_x, self.out_dim = dim_y, dim_x, out_dim
        self.variant, self.q_mode, self.projects_values = variant, q_mode, value_projection
        self.up_factor = check_positive_int(up_factor, "up_factor", "SAPA")
        self.up_kernel_size = check_odd_kernel_size(up_kernel_size, "up_kernel_size", "SAPA")
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim", "SAPA")
        check_bool(qkv_bias, "qkv_bias", "SAPA")
        self.backend = None
        if variant == "I":
            return
        self.norm_y = nn.LayerNorm(dim_y)
        self.norm_x = nn.LayerNorm(dim_x)
        if q_mode == "encoder_only":
            self.q = nn.Linear(dim_y, embedding_dim, bias=qkv_bias)
        elif q_mode == "cat":
            self.q = nn.Linear(dim_y + dim_x, embedding_dim, bias=qkv_bias)
        else:
            self.qy = nn.Linear(dim_y, embedding_dim, bias=qkv_bias)
            self.qx = nn.Linear(dim_x, embedding_dim, bias=qkv_bias)
            self.gate = nn.Linear(dim_x, 1, bias=qkv_bias)
        self.k = nn.Linear(dim_x, embedding_dim, bias=qkv_bias)
        if value_projection:
            self.v = nn.Linear(dim_x, out_dim, bias=qkv_bias)
        self.reset_parameters()

    def reset_parameters(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _check(self, y, x):
        op = "SAPA"
        check_batched_map(y, "y", op)
        check_batched_map(x, "x", op)
        check_guide_pair(y, "y", x, "x", self.up_factor, op, "up_factor")
        check_module_input(y, "y", self.dim_y, self, op)
        check_module_input(x, "x", self.dim_x, self, op)

    def _projections(self, y, x):
        """(q, key, values) in (N, d, H, W) layout, as the variant defines them."""
        y_last, x_last = _channels_last(y), _channels_last(x)
        if self.variant == "I":
            q = F.layer_norm(y_last, (self.dim_y,))
            key = F.layer_norm(x_last, (self.dim_x,))
            return _channels_first(q), _channels_first(key), x
        s = self.up_factor
        x_normed = self.norm_x(x_last)
        key = self.k(x_normed)
        if self.q_mode == "encoder_only":
            q = self.q(self.norm_y(y_last))
        else:
            x_up = _channels_last(F.interpolate(x, scale_factor=s, mode="nearest"))
            if self.q_mode == "cat":
                q = self.q(torch.cat([self.norm_y(y_last), x_up], dim=-1))
            else:
                gate = torch.sigmoid(self.gate(x_normed))
                gate = _channels_last(F.interpolate(_channels_first(gate), scale_factor=s, mode="nearest"))
                q = gate * self.qy(self.norm_y(y_last)) + (1 - gate) * self.qx(x_up)
        values = _channels_first(self.v(x_normed)) if self.projects_values else x
        return _channels_first(q), _channels_first(key), values

    def queries_and_keys(self, y, x):
        """(q, key) in (N, d, H, W) layout, as the variant defines them."""
        q, key, _ = self._projections(y, x)
        return q, key

    def _kernels(self, q, key):
        logits = sapa_similarity(q, key, self.up_kernel_size, self.up_factor, backend=self.backend)
        return F.softmax(logits, dim=1)

    def kernels(self, y, x):
        """The normalised upsampling kernels, (N, k*k, s*h, s*w)."""
        self._check(y, x)
        return self._kernels(*self.queries_and_keys(y, x))

    def forward(self, y, x):
        self._check(y, x)
        q, key, values = self._projections(y, x)
        return carafe(values, self._kernels(q, key), self.up_kernel_size, self.up_factor, 1, backend=self.backend)

    def extra_repr(self):
        mode = f"variant={self.variant!r}" if self.variant is not None else f"q_mode={self.q_mode!r}"
        values = f", out_dim={self.out_dim}, v_embed=True" if self.projects_values else ""
        return (f"dim_y={self.dim_y}, dim_x={self.dim_x}, {mode}{values}, up_factor={self.up_factor}, "
                f"up_kernel_size={self.up_kernel_size}, embedding_dim={self.embedding_dim}")
