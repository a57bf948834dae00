"""A small image decoder from latent codes (for reconstruction losses and code-swap views).

:class:`CodeDecoder` concatenates one or more code vectors, maps them to a ``channels[0] x 4 x 4`` seed map and
doubles the resolution with ``Upsample(nearest) - conv3x3 - BN - ReLU`` blocks until ``out_size``, then a conv3x3
to ``out_channels`` and a sigmoid, so the output is an image in ``[0, 1]`` like fer-lab's batches. It is the
DCGAN-style generator shape (Radford et al., ICLR 2016) with nearest upsampling instead of transposed
convolutions (no checkerboard artefacts; Odena et al., Distill 2016). Not from any FER paper.

Shapes: codes ``[B, d_1], ..., [B, d_k]`` -> ``[B, out_channels, out_size, out_size]``.

>>> import torch
>>> dec = CodeDecoder((16, 8), out_size=32)
>>> tuple(dec(torch.zeros(2, 16), torch.zeros(2, 8)).shape)
(2, 3, 32, 32)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CodeDecoder", "image_target", "reconstruction_loss"]


class CodeDecoder(nn.Module):
    """Decoder from concatenated codes to an image.

    Args:
        code_dims: the size of each code passed to :meth:`forward`, in order.
        out_size: side of the output image; a power of two >= 8 (4 x 4 seed, doubled ``log2(out_size / 4)`` times).
        channels: channels of the seed map and of each upsampling stage; the last entry is repeated when there
            are more stages than entries (default ``(128, 64, 32, 32)``).
        out_channels: channels of the image (3).
    """

    def __init__(self, code_dims: Sequence[int], out_size: int = 32, channels: Sequence[int] = (128, 64, 32, 32),
                 out_channels: int = 3) -> None:
        super().__init__()
        self.code_dims = tuple(int(d) for d in code_dims)
        if not self.code_dims or min(self.code_dims) < 1:
            raise ValueError(f"code_dims must be positive sizes, got {tuple(code_dims)!r}")
        ups = math.log2(out_size / 4) if out_size >= 8 else -1
        if ups != int(ups) or ups < 1:
            raise ValueError(f"out_size must be a power of two >= 8, got {out_size}")
        ups = int(ups)
        ch = list(channels) + [channels[-1]] * max(0, ups + 1 - len(channels))
        self.out_size, self.out_channels = int(out_size), int(out_channels)
        self.seed = nn.Sequential(nn.Linear(sum(self.code_dims), ch[0] * 16), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        for i in range(ups):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[i], ch[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(ch[i + 1]), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(ch[ups], out_channels, 3, padding=1)
        self.seed_channels = ch[0]

    def forward(self, *codes: Tensor) -> Tensor:
        if len(codes) != len(self.code_dims) or any(c.shape[-1] != d for c, d in zip(codes, self.code_dims)):
            raise ValueError(f"expected codes of sizes {self.code_dims}, got {[tuple(c.shape) for c in codes]}")
        z = torch.cat(codes, dim=1)
        h = self.seed(z).view(len(z), self.seed_channels, 4, 4)
        return torch.sigmoid(self.to_image(self.blocks(h)))

    def extra_repr(self) -> str:
        return f"code_dims={self.code_dims}, out_size={self.out_size}"


def image_target(images: Tensor, size: int) -> Tensor:
    """``images [B, C, S, S]`` at the decoder's resolution: area-averaged down (or bilinear up) to ``size``."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if images.shape[-1] > size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def reconstruction_loss(recon: Tensor, images: Tensor, norm: str = "l1") -> Tensor:
    """Mean absolute (``"l1"``) or squared (``"l2"``) pixel error between ``recon`` and ``images`` brought to the
    decoder's size (:func:`image_target`)."""
    target = image_target(images, recon.shape[-1])
    if norm == "l1":
        return (recon - target).abs().mean()
    if norm == "l2":
        return (recon - target).pow(2).mean()
    raise ValueError(f"reconstruction norm must be 'l1' or 'l2', got {norm!r}")
