"""The small encoder-decoder of the capstone, with a pluggable upsampler.

::

    image (3, 64, 64)
      stem   : conv3x3-BN-ReLU x2           -> e1 (C, 64, 64)
      down1  : maxpool, conv3x3-BN-ReLU x2  -> e2 (C, 32, 32)
      down2  : maxpool, conv3x3-BN-ReLU x2  -> e3 (C, 16, 16)
      down3  : maxpool, conv3x3-BN-ReLU x2  -> d  (C,  8,  8)
    3 decoder stages, from d and the skip e3, e2, e1 in turn:
      up     : the upsampler, x2            -> u  (C, 2h, 2w)   (nearest, bilinear, CARAFE, SAPA, FADE...)
      fuse   : conv3x3-BN-ReLU on concat[u, skip]  -> d (C, 2h, 2w)
      head   : conv1x1 -> classes (region) or 1 alpha logit (detail)

Every level has the same width ``C`` (FADE blends the encoder and decoder
features channel by channel, so they need equal widths); every upsampler
sees the same two tensors, the decoder feature ``de`` ``(N, C, h, w)`` and the
encoder feature ``en`` ``(N, C, 2h, 2w)`` of the skip connection, and
returns ``(N, C, 2h, 2w)``. Nearest, bilinear and CARAFE ignore ``en``.

All upsamplers come from upsamplelib and run on its Numba CPU backend for
CPU tensors (the default ``backend=None``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import CARAFE, FADE, SAPA, interpolate

#: The seven upsamplers of the experiment, in the order of the tables.
UPSAMPLERS = ("nearest", "bilinear", "carafe", "sapa-b", "sapa-g", "fade", "fade-lite")

#: Width of the kernel generators' compressed features (CARAFE's
#: ``compressed_channels``, SAPA's and FADE's ``embedding_dim``): the papers
#: use 64 for 256-channel decoders; here the decoders are 16 channels wide,
#: so the generators compress to 16 as well.
EMBEDDING = 16


class Interpolate(nn.Module):
    """Nearest or bilinear x2 (``ul.interpolate``): no parameters."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, en, de):
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        return interpolate(de, scale_factor=2, mode=self.mode, **kwargs)

    def extra_repr(self):
        return f"mode={self.mode!r}"


class DecoderOnly(nn.Module):
    """Adapts a ``forward(x)`` upsampler (CARAFE) to ``forward(en, de)``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, en, de):
        return self.module(de)


class EncoderGuided(nn.Module):
    """Adapts ``forward(y, x)`` / ``forward(en, de)`` upsamplers (SAPA, FADE)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, en, de):
        return self.module(en, de)


def make_upsampler(name: str, channels: int, embedding: int = EMBEDDING) -> nn.Module:
    """The ``name`` upsampler as a ``forward(en, de)`` module for a decoder
    ``channels`` wide: ``de (N, C, h, w)``, ``en (N, C, 2h, 2w)`` -> ``(N, C, 2h, 2w)``."""
    if name in ("nearest", "bilinear"):
        return Interpolate(name)
    if name == "carafe":
        return DecoderOnly(CARAFE(channels, scale=2, up_kernel=5, encoder_kernel=3, compressed_channels=embedding))
    if name in ("sapa-b", "sapa-g"):
        return EncoderGuided(SAPA(channels, channels, up_factor=2, up_kernel_size=5, embedding_dim=embedding,
                                  variant=name[-1].upper()))
    if name in ("fade", "fade-lite"):
        return EncoderGuided(FADE(channels, channels, scale=2, up_kernel_size=5, embedding_dim=embedding,
                                  lite=name == "fade-lite"))
    raise ValueError(f"unknown upsampler {name!r}; expected one of {', '.join(UPSAMPLERS)}")


def _block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def _fuse(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class EncoderDecoder(nn.Module):
    """3-stage U-shaped network; ``upsampler`` is a name of ``UPSAMPLERS`` or
    a callable ``factory(channels) -> module`` whose ``forward(en, de)`` upsamples
    ``de`` x2 (your own upsampler plugs in here). ``outputs`` is the number of
    classes (region) or 1 (detail: an alpha logit)."""

    def __init__(self, upsampler="bilinear", outputs: int = 5, width: int = 16, in_channels: int = 3):
        super().__init__()
        self.width = width
        self.upsampler_name = upsampler if isinstance(upsampler, str) else getattr(upsampler, "__name__", "custom")
        factory = (lambda c: make_upsampler(upsampler, c)) if isinstance(upsampler, str) else upsampler
        self.encoder = nn.ModuleList([_block(in_channels, width)] + [_block(width, width) for _ in range(3)])
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList([factory(width) for _ in range(3)])
        self.fuses = nn.ModuleList([_fuse(2 * width, width) for _ in range(3)])
        self.head = nn.Conv2d(width, outputs, 1)

    def features(self, x):
        """Encoder features, finest first: [e1, e2, e3, bottleneck]."""
        skips = []
        for index, block in enumerate(self.encoder):
            x = block(x if index == 0 else self.pool(x))
            skips.append(x)
        return skips

    def decode(self, skips, keep=None):
        """The decoder from ``features``. With ``keep`` a list, the inputs of
        each upsampler ``(en, de)`` are appended to it (for the kernel plots)."""
        d = skips[-1]
        for up, fuse, en in zip(self.ups, self.fuses, reversed(skips[:-1])):
            if keep is not None:
                keep.append((en, d))
            d = fuse(torch.cat([up(en, d), en], dim=1))
        return self.head(d)

    def forward(self, x):
        return self.decode(self.features(x))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def upsampler_parameters(model: EncoderDecoder) -> int:
    """Parameters in the three upsampling stages alone."""
    return sum(count_parameters(up) for up in model.ups)


def matched_width(upsampler, budget: int, outputs: int = 5, widths=range(4, 41)):
    """The largest width whose ``EncoderDecoder(upsampler, outputs, width)``
    has at most ``budget`` parameters (None if none has): the network to
    compare with when parameters, not the operator, might explain a gain."""
    best = None
    for width in widths:
        with torch.random.fork_rng(devices=[]):
            count = count_parameters(EncoderDecoder(upsampler, outputs, width))
        if count <= budget:
            best = width
    return best
