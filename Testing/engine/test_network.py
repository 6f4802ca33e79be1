import pytest
import torch

from powdr_outpaint.model.network import AttentionBlock, NetworkConfig, OutpaintUNet, count_parameters
from powdr_outpaint.model.presets import PRESETS, get_preset
from powdr_outpaint.model.runtime import FastForward

REFERENCE_PARAMETERS = 81.5e6  # the public reference network at the paper's settings


def test_paper_preset_has_the_papers_size():
    preset = get_preset("paper")
    assert preset.network.base_channels == 64
    assert preset.network.channel_mult == (1, 2, 2, 4, 4)
    assert preset.network.dropout == pytest.approx(0.1)
    assert preset.training.learning_rate == pytest.approx(1e-5)
    with torch.device("meta"):
        parameters = count_parameters(OutpaintUNet(preset.network))
    assert abs(parameters - REFERENCE_PARAMETERS) / REFERENCE_PARAMETERS < 0.10


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_grid_fits_its_network(name):
    preset = get_preset(name)
    preset.grid.validate(preset.network.divisor)


def test_forward_shapes_and_conditioning_on_time_and_input():
    torch.manual_seed(0)
    net = OutpaintUNet(get_preset("tiny").network)
    for module in net.modules():  # give zero-initialised layers weights so outputs vary
        if isinstance(module, torch.nn.Conv3d) and not module.weight.any():
            module.reset_parameters()
    net.eval()
    x = torch.randn(2, 16, 8, 8, 12)
    t = torch.tensor([10, 900])
    out = net(x, t)
    assert out.shape == (2, 8, 8, 8, 12)
    assert not torch.allclose(net(x, torch.tensor([500, 500])), out)
    x2 = x.clone()
    x2[:, 8:] += 1.0  # a different condition changes the prediction
    assert not torch.allclose(net(x2, t), out)


def test_untrained_network_starts_as_zero_prediction():
    net = OutpaintUNet(get_preset("tiny").network).eval()
    assert net(torch.randn(1, 16, 8, 8, 8), torch.tensor([3])).abs().max() == 0


def test_attention_uses_every_voxel():
    torch.manual_seed(0)
    block = AttentionBlock(16, 8, 4)
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(1, 16, 3, 3, 3)
    y = block(x)
    x2 = x.clone()
    x2[..., 0, 0, 0] += 5.0
    changed = (block(x2) - y).abs().sum(dim=1)[0]
    assert (changed[1:, 1:, 1:] > 0).all()  # a far-away voxel influences every other one


def test_fast_forward_matches_plain_execution():
    torch.manual_seed(0)
    net = OutpaintUNet(get_preset("tiny").network)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d) and not module.weight.any():
            module.reset_parameters()
    net.eval()
    x = torch.randn(2, 16, 8, 8, 8)
    t = torch.tensor([1, 2])
    with torch.no_grad():
        plain = net(x, t)
    # fp32: the layout and inference mode must not change the numbers (bf16 is tested apart)
    fast = FastForward(net, torch.device("cpu"), precision="fp32")(x, t)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_invalid_network_configs_are_refused():
    with pytest.raises(ValueError, match="normalisation groups"):
        NetworkConfig(base_channels=10, norm_groups=32).validate()
    with pytest.raises(ValueError, match="attention levels"):
        NetworkConfig(attention_levels=(7,)).validate()
