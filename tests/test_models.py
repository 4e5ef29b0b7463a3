"""Model construction, shapes and the block structure CF-k and EU-k rely on."""

import pytest
import torch

from trainables.models import BLOCKS, ModelConfig, block_parameters, build_model, last_blocks


@pytest.mark.parametrize("arch,size,channels", [("resnet18", 32, 3), ("resnet18_small", 8, 1), ("resnet18", 16, 1)])
def test_forward_shapes(arch, size, channels):
    model = build_model(ModelConfig(arch, width=8), channels, 5)
    assert model(torch.rand(2, channels, size, size)).shape == (2, 5)


def test_resnet18_is_torchvisions_architecture():
    from torchvision.models import resnet18

    ours = build_model(ModelConfig("resnet18"), 3, 8)
    reference = resnet18(num_classes=8)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_blocks_cover_every_parameter_once():
    model = build_model(ModelConfig("resnet18_small", 4), 1, 10)
    params = block_parameters(model, list(BLOCKS))
    assert len(params) == len(list(model.parameters())) and len({id(p) for p in params}) == len(params)
    assert last_blocks(model, 3) == ["layer3", "layer4", "fc"]
    with pytest.raises(ValueError, match="k must be between 1 and 6"):
        last_blocks(model, 7)


def test_unknown_architecture_lists_known():
    with pytest.raises(ValueError, match="resnet18, resnet18_small"):
        build_model(ModelConfig("vgg"), 3, 2)


@pytest.mark.parametrize("inplanes,planes,stride", [(8, 8, 1), (8, 16, 2)])
def test_basic_block_matches_torchvision(inplanes, planes, stride):
    """Same seed, same weights and outputs as torchvision's block: digits checkpoints stay interchangeable."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock as TvBlock

    from trainables.models import BasicBlock

    def make(cls):
        torch.manual_seed(0)
        down = None
        if stride != 1 or inplanes != planes:
            down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        return cls(inplanes, planes, stride, down).eval()

    ours, theirs = make(BasicBlock), make(TvBlock)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    x = torch.rand(2, inplanes, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x))


def test_trial_code_does_not_import_torchvision():
    """Every trial worker imports the trial code: torchvision (a second each) only when a resnet18 is built."""
    import subprocess
    import sys

    code = "import sys, trainables.trial, study.trainable, study.context, study.pipeline, study.launch; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
