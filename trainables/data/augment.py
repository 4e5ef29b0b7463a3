"""Training augmentation of SPEC section 4 on whole batches, with per-sample random parameters.

Random horizontal flip, random affine (shear up to 10 degrees along x, scale 0.8-1.2)
and colour jitter (brightness, contrast, saturation, each factor in [0.8, 1.2]). It
runs on the batch's device, so on a GPU the augmentation costs no CPU time. The jitter
is applied in a fixed order (brightness, contrast, saturation) rather than torchvision's
random order: one branch-free kernel chain for the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1], the models' input range (no normalisation, SPEC section 4)."""
    return images.float().div_(255.0)


def _uniform(n: int, low: float, high: float, gen: torch.Generator | None) -> torch.Tensor:
    # Drawn on the CPU generator so a seed gives the same parameters on every device.
    return torch.rand(n, generator=gen) * (high - low) + low


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R 601 luma, as torchvision uses


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    shear_deg: float = 10.0,
    scale: tuple[float, float] = (0.8, 1.2),
    jitter: float = 0.2,
    flip: bool = True,
) -> torch.Tensor:
    """uint8 N x C x H x W -> augmented float N x C x H x W in [0, 1], on the input's device."""
    x = to_float(images)
    n, device = x.shape[0], x.device
    # Every random parameter is drawn on the CPU first, in a fixed order, and reaches the
    # device in one copy (from pinned memory on CUDA, so the copy does not stall the device).
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    lo, hi = 1.0 - jitter, 1.0 + jitter
    drawn = [sign, _uniform(n, scale[0], scale[1], generator), _uniform(n, -shear_deg, shear_deg, generator)]
    if jitter > 0:
        drawn += [_uniform(n, lo, hi, generator) for _ in range(3)]  # brightness, contrast, saturation
    params = torch.stack(drawn)
    params = params.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else params.to(device)
    sign, s = params[0], params[1]
    shear = torch.tan(params[2] * (math.pi / 180.0))
    # Flip and affine in one resampling: output pixel p samples the input at F A^-1 p, with
    # A = scale * [[1, tan(shear)], [0, 1]] and F = diag(-1, 1) for flipped samples.
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = sign / s
    theta[:, 0, 1] = -sign * shear / s
    theta[:, 1, 1] = 1.0 / s
    if flip or shear_deg or scale != (1.0, 1.0):
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if jitter > 0:
        brightness, contrast, saturation = (params[i][:, None, None, None] for i in (3, 4, 5))
        x.mul_(brightness).clamp_(0, 1)  # in place: the batch is ours (grid_sample made it)
        mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x.mul_(contrast).add_((1 - contrast) * mean).clamp_(0, 1)
        x.mul_(saturation).add_((1 - saturation) * _grayscale(x)).clamp_(0, 1)
    return x
