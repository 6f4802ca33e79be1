from dataclasses import replace

import pytest
import torch

from powdr_outpaint.model.diffusion import DiffusionConfig, Schedule
from powdr_outpaint.model.network import (
    AttentionBlock, NetworkConfig, OutpaintUNet, count_parameters, rescale_detail_io, skip_weights,
)
from powdr_outpaint.model.presets import PRESETS, get_preset
from powdr_outpaint.model.runtime import FastForward
from powdr_outpaint.model.transforms import SubbandScale, image_to_wavelet, make_condition, wavelet_to_image

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


def skip_network(seed: int = 0) -> OutpaintUNet:
    """The tiny network with the input skip and random (untrained) weights everywhere."""
    torch.manual_seed(seed)
    net = OutpaintUNet(replace(get_preset("tiny").network, input_skip=(0.88, 0.13)), DiffusionConfig())
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d) and not module.weight.any():
            module.reset_parameters()
    return net.eval()


def test_input_skip_passes_a_nearly_clean_input_through():
    """A fresh network (zero output layer, as training starts) with the skip returns a nearly
    clean x_t's detail as its x0, so the last denoising steps keep what x_t carries; without
    the skip the network has to learn to rebuild it through all its levels."""
    schedule = Schedule.from_config(DiffusionConfig())
    torch.manual_seed(1)
    x0 = torch.cat([0.88 * torch.randn(1, 1, 8, 8, 8), 0.13 * torch.randn(1, 7, 8, 8, 8)], dim=1)
    condition = torch.zeros_like(x0)
    plain = OutpaintUNet(get_preset("tiny").network).eval()
    skip = OutpaintUNet(replace(get_preset("tiny").network, input_skip=(0.88, 0.13)), DiffusionConfig()).eval()
    detail = x0[:, 1:].pow(2).mean()
    with torch.no_grad():
        for t in (0, 5):
            step = torch.tensor([t])
            xt = schedule.q_sample(x0, step, torch.randn_like(x0))
            skip_error = (skip(torch.cat([xt, condition], 1), step) - x0)[:, 1:].pow(2).mean() / detail
            plain_error = (plain(torch.cat([xt, condition], 1), step) - x0)[:, 1:].pow(2).mean() / detail
            assert skip_error < 0.05, f"t={t}: the skip network loses {skip_error:.2f} of the detail energy"
            assert plain_error > 0.95


def test_input_skip_weights_keep_the_target_scale_and_end_as_plain_x0():
    """c_skip is the best linear estimate's weight, so F's target (x0 - c_skip x_t) / c_out
    has the data's RMS at every timestep, and c_in gives F's input unit RMS; at the noisiest
    timestep F is the plain x0 prediction from the plain input."""
    config = replace(get_preset("tiny").network, input_skip=(0.88, 0.13))
    diffusion = DiffusionConfig()
    c_skip, c_out, c_in = skip_weights(config, diffusion)
    assert c_skip.shape == c_out.shape == c_in.shape == (diffusion.timesteps, 8)
    assert c_skip[0].min() > 0.99 and c_skip[-1].max() < 0.01
    assert abs(float(c_out[-1].min()) - 1.0) < 1e-3
    assert abs(float(c_in[-1].min()) - 1.0) < 1e-3 and float(c_in[0, 1]) > 7  # detail of a clean input: x 7.7
    schedule = Schedule.from_config(diffusion)
    torch.manual_seed(2)
    x0 = torch.cat([0.88 * torch.randn(1, 1, 16, 16, 16), 0.13 * torch.randn(1, 7, 16, 16, 16)], dim=1)
    for t in (0, 50, 300, 999):
        xt = schedule.q_sample(x0, torch.tensor([t]), torch.randn_like(x0))
        target = (x0 - c_skip[t].view(1, 8, 1, 1, 1) * xt) / c_out[t].view(1, 8, 1, 1, 1)
        rms = target.pow(2).mean(dim=(0, 2, 3, 4)).sqrt()
        torch.testing.assert_close(rms[0], torch.tensor(0.88), rtol=0.1, atol=0.0)
        torch.testing.assert_close(rms[1:], torch.full((7,), 0.13), rtol=0.1, atol=0.0)
        # and the U-Net's noisy input has unit RMS at every noise level
        scaled = (c_in[t].view(1, 8, 1, 1, 1) * xt).pow(2).mean(dim=(0, 2, 3, 4)).sqrt()
        torch.testing.assert_close(scaled, torch.ones(8), rtol=0.1, atol=0.0)


def test_input_skip_needs_the_schedule_and_two_positive_values():
    config = replace(get_preset("tiny").network, input_skip=(0.88, 0.13))
    with pytest.raises(ValueError, match="diffusion schedule"):
        OutpaintUNet(config)
    with pytest.raises(ValueError, match="two positive"):
        replace(config, input_skip=(0.88,)).validate()
    with pytest.raises(ValueError, match="two positive"):
        replace(config, input_skip=(0.88, -1.0)).validate()


def test_input_skip_adds_no_weights_and_runs_in_bf16():
    plain = OutpaintUNet(get_preset("tiny").network)
    skip = skip_network()
    assert set(skip.state_dict()) == set(plain.state_dict())
    x = torch.randn(2, 16, 8, 8, 8)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        full = skip(x, t)
    fast = FastForward(skip, torch.device("cpu"), precision="bf16")(x, t)
    assert fast.dtype == torch.float32
    assert (fast - full).abs().max() < 0.1 * full.abs().max()


def test_a_wide_first_stage_cascade_fits_the_bundle_size_and_shares_the_demo_grid():
    """demo-wide is meant to replace the bundled first stage: with the refine stage and a
    demo-guide guide, its fp16 weights must stay under the 25 MB a bundled file may take, and it
    must work on the demo grid, which the refine stage and the guide are built for."""
    wide, demo = get_preset("demo-wide"), get_preset("demo")
    assert wide.grid == demo.grid and wide.network.in_channels == demo.network.in_channels
    with torch.device("meta"):
        counts = {name: count_parameters(OutpaintUNet(get_preset(name).network))
                  for name in ("demo-wide", "demo", "refine", "demo-guide")}
    assert counts["demo-wide"] > 2 * counts["demo"]
    assert 2 * (counts["demo-wide"] + counts["refine"] + counts["demo-guide"]) < 25e6


@pytest.mark.parametrize("sequences", [1, 4])
def test_rescaled_detail_weights_start_where_the_source_network_was(sequences):
    """Fine-tuning a first stage onto scaled detail bands starts from the same clean-input images."""
    torch.manual_seed(0)
    config = get_preset("tiny").network
    config = replace(config, in_channels=16 * sequences, out_channels=8 * sequences)
    net = OutpaintUNet(config)
    for module in net.modules():  # give zero-initialised layers weights so outputs vary
        if isinstance(module, torch.nn.Conv3d) and not module.weight.any():
            module.reset_parameters()
    net.eval()
    image = torch.rand(1, sequences, 16, 16, 16) * 2 - 1
    lesion = torch.zeros(1, 1, 16, 16, 16)
    lesion[..., 4:9, 5:10, 6:11] = 1
    t = torch.tensor([0])
    old, new = SubbandScale(3.0, 1.0), SubbandScale(3.0, 4.0)

    def predicted(network, scale):
        inputs = torch.cat([image_to_wavelet(image, scale), make_condition(image, lesion, scale)], dim=1)
        return wavelet_to_image(network(inputs, t), scale)

    rescaled = OutpaintUNet(config).eval()
    rescaled.load_state_dict(rescale_detail_io(net.state_dict(), 4.0, sequences))
    before = predicted(net, old)
    torch.testing.assert_close(predicted(rescaled, new), before, atol=2e-5, rtol=1e-4)
    # Without the rescaling the same weights draw another image from the scaled bands.
    assert (predicted(net, new) - before).abs().max() > 1e-2
    assert torch.equal(net.state_dict()["stem.weight"], net.stem.weight)  # the source is left as it was
