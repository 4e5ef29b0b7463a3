"""What the distillation methods share (SCRUB, Bad Teaching): the temperature, the KL term, frozen teachers."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .interface import Context, Method
from .params import POSITIVE, MethodParams, Search, declare


@dataclass(frozen=True)
class DistillationParams(MethodParams):
    temperature: float = declare(4.0, POSITIVE, Search("float", 1.0, 8.0))


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
               bernoulli: bool = False) -> torch.Tensor:
    """T^2 times the batch mean of KL(p_teacher || p_student), p = softmax(logits / T) (SPEC section 5.2); T is
    the method's `temperature` (declared once, in `DistillationParams`).

    The softmax runs over the outputs, as the notebooks' `DistillKL` does, also over the 3
    independent attribute logits of MUCAC (`paper`). `bernoulli` treats each output as its own
    Bernoulli and sums the attributes' KLs (`fair` on multi-label).
    """
    s, t = student.float() / temperature, teacher.float() / temperature
    if bernoulli:
        lt1, lt0, ls1, ls0 = F.logsigmoid(t), F.logsigmoid(-t), F.logsigmoid(s), F.logsigmoid(-s)
        kl = (lt1.exp() * (lt1 - ls1) + lt0.exp() * (lt0 - ls0)).sum(dim=1)
        return kl.mean() * temperature**2
    # kl_div(log q, p) is KL(p || q); summed, then divided by the batch size, as `DistillKL` does
    return F.kl_div(F.log_softmax(s, dim=1), F.softmax(t, dim=1), reduction="sum") * temperature**2 / s.shape[0]


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class DistillationMethod(Method):
    """A method that distils from teachers at a temperature."""

    Params = DistillationParams

    def kl(self, ctx: Context, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return distill_kl(student, teacher, self.hp.temperature, ctx.family == "multilabel" and not ctx.paper)
