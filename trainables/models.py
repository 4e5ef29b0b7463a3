"""ResNet-18 models (SPEC section 4) and their block structure for CF-k and EU-k.

`resnet18` is torchvision's architecture, trained from scratch, with the task's output
layer. `resnet18_small` keeps ResNet-18's block layout (2-2-2-2 basic blocks) but has a
3x3 stride-1 stem, no max-pool and a configurable width, so 8x8 digits and a 2-core CPU
work. Both expose the same module names (conv1, bn1, layer1-4, fc).

torchvision is imported only when a `resnet18` is built: importing it costs about a
second per process (it pulls in torch._dynamo), paid again by every trial worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ARCHITECTURES = ("resnet18", "resnet18_small")
BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")  # CF-k / EU-k count k from the end


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"
    width: int = 64  # resnet18_small only: channels of layer1 (doubling per stage)


class BasicBlock(nn.Module):
    """ResNet's basic block, laid out as torchvision's (same module names and creation order,
    so a seed gives the same weights and checkpoints stay interchangeable)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class SmallResNet18(nn.Module):
    """ResNet-18 with a 3x3 stem, no max-pool and `width` channels in layer1."""

    def __init__(self, in_channels: int, num_outputs: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._stage(width, 1)
        self.layer2 = self._stage(width * 2, 2)
        self.layer3 = self._stage(width * 4, 2)
        self.layer4 = self._stage(width * 8, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8, num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's initialisation, so both variants train alike
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, planes: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        blocks = [BasicBlock(self.inplanes, planes, stride, down), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(cfg: ModelConfig, in_channels: int, num_outputs: int) -> nn.Module:
    if cfg.arch == "resnet18":
        from torchvision.models import resnet18 as tv_resnet18

        model = tv_resnet18(weights=None, num_classes=num_outputs)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        return model
    if cfg.arch == "resnet18_small":
        if cfg.width < 1:
            raise ValueError(f"model width must be positive, got {cfg.width}")
        return SmallResNet18(in_channels, num_outputs, cfg.width)
    raise ValueError(f"unknown architecture {cfg.arch!r}; known: {', '.join(ARCHITECTURES)}")


def block_modules(model: nn.Module, name: str) -> list[nn.Module]:
    if name == "stem":
        return [model.conv1, model.bn1]
    return [getattr(model, name)]


def last_blocks(model: nn.Module, k: int) -> list[str]:
    """Names of the last k blocks (k = 3: layer3, layer4, fc)."""
    if not 1 <= k <= len(BLOCKS):
        raise ValueError(f"k must be between 1 and {len(BLOCKS)} (blocks {', '.join(BLOCKS)}), got {k}")
    return list(BLOCKS[-k:])


def block_parameters(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    return [p for name in names for m in block_modules(model, name) for p in m.parameters()]


def reinitialise(module: nn.Module) -> None:
    """Draw `module`'s parameters and batch-norm statistics afresh, as the ResNet constructors do:
    convolutions Kaiming-normal (fan-out), batch norm weight 1 and bias 0, linear layers their default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()  # also resets the running statistics
        elif isinstance(m, nn.Linear):
            m.reset_parameters()


def train_only(model: nn.Module, names: list[str]) -> None:
    """Freeze every parameter outside the named blocks (their batch-norm statistics still move in train mode)."""
    trainable = {id(p) for p in block_parameters(model, names)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
