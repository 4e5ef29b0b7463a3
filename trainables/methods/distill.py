"""What the distillation methods share (SCRUB, Bad Teaching): the temperature, the KL term, frozen teachers."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .interface import Method
from .params import POSITIVE, MethodParams, Search, hp


@dataclass(frozen=True)
class DistillationParams(MethodParams):
    temperature: float = hp(4.0, POSITIVE, Search("float", 1.0, 8.0))


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float = 4.0) -> torch.Tensor:
    """KL(student || teacher) of the temperature-softened outputs, scaled by T^2 (SPEC section 5).

    Multi-label outputs are independent Bernoullis: the KL is summed over the two
    outcomes of each attribute and averaged over attributes.
    """
    s, t = student.float() / temperature, teacher.float() / temperature
    if task == "multiclass":
        log_s, log_t = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
        kl = (log_s.exp() * (log_s - log_t)).sum(dim=1)
    else:
        ls1, ls0, lt1, lt0 = F.logsigmoid(s), F.logsigmoid(-s), F.logsigmoid(t), F.logsigmoid(-t)
        kl = (ls1.exp() * (ls1 - lt1) + ls0.exp() * (ls0 - lt0)).mean(dim=1)
    return kl.mean() * temperature**2


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class DistillationMethod(Method):
    """A method that distils from teachers at a temperature."""

    Params = DistillationParams
    pairs = True
