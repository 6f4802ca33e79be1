"""A first stage that also sees the brain's outline (``train --outline``).

What a user relies on: such a model reads back as what it is, and files without the outline
still read; a fine-tune from a model without it starts from that model's predictions; sampling
gives the network the outline training gave it, on the input's grid with the lesion exact;
stages that do not see the same inputs are not joined to it.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import qa_data
import torch
from test_train import brats_or_skip, tiny_options

from powdr_outpaint.errors import CheckpointError, PowdrError
from powdr_outpaint.model.checkpoint import ModelConfig, initial_weights, load_model, save_cascade
from powdr_outpaint.model.network import OutpaintUNet, add_input_channels
from powdr_outpaint.model.transforms import outline_of
from powdr_outpaint.training.train import train


def _outline_config(preset: str = "tiny") -> ModelConfig:
    config = ModelConfig.from_preset(preset)
    return replace(config, outline=True, network=replace(config.network, in_channels=config.network.in_channels + 1))


def test_outline_is_stored_and_older_files_read_without_it():
    config = _outline_config()
    again = ModelConfig.from_dict(json.loads(config.to_json()))
    assert again.outline and again.network.in_channels == 17 and again.card()["outline"] is True
    plain = ModelConfig.from_preset("tiny")
    raw = json.loads(plain.to_json())
    assert "outline" not in raw  # what versions without the outline wrote, and can still read
    assert ModelConfig.from_dict(raw).outline is False
    with pytest.raises(ValueError, match="must take 17 channels"):
        replace(config, network=plain.network).validate()
    with pytest.raises(ValueError, match="only a first stage"):
        refine = ModelConfig.from_preset("tiny-refine")
        replace(refine, outline=True, network=replace(refine.network, in_channels=18)).validate()
    with pytest.raises(ValueError, match="true or false"):
        ModelConfig.from_dict(dict(json.loads(config.to_json()), outline="yes"))


def test_a_new_outline_channel_starts_with_no_effect():
    """--init-from a model without the outline: the fine-tune starts from its exact predictions."""
    plain = ModelConfig.from_preset("tiny")
    weights = initial_weights(plain, seed=3)
    before = OutpaintUNet(plain.network, plain.diffusion).eval()
    before.load_state_dict(weights)
    config = _outline_config()
    after = OutpaintUNet(config.network, config.diffusion).eval()
    after.load_state_dict(add_input_channels(weights, 1))
    x = torch.randn(1, 16, 24, 24, 16)
    outline = torch.rand(1, 1, 24, 24, 16) * 2 - 1
    t = torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(after(torch.cat([x, outline], 1), t), before(x, t))


def test_sampling_sees_the_outline_training_saw(brats_case):
    """The outline a model is given at sampling is the brain its training items carried."""
    from powdr_outpaint.outpainting.outpaint import load_case
    from powdr_outpaint.training.data import CaseFiles, PrepareSettings, prepare_case

    config = _outline_config()
    files = CaseFiles(name=brats_case["name"], image=brats_case["image"], mask=brats_case["mask"])
    trained = prepare_case(files, PrepareSettings(config))

    class Stub:  # load_case reads only the configuration and the stages of a loaded model
        pass

    loaded = Stub()
    loaded.config, loaded.refiner, loaded.detailer = config, None, None
    case = load_case(brats_case["image"], brats_case["mask"], loaded, None)
    np.testing.assert_array_equal(case.brain, trained.foreground)
    # Whole-brain values inside, air outside, the outline in between.
    condition = outline_of(torch.from_numpy(case.brain)[None, None]).numpy()[0, 0]
    assert condition.max() == 1.0 and condition.min() == -1.0
    assert 0.1 < (condition > -1).mean() < 0.9


def test_outline_run_trains_samples_and_joins_only_its_kind(brats_case, tmp_path):
    four_cases = qa_data.linked_cases(brats_or_skip()[:4], tmp_path / "data")
    cache_dir = tmp_path / "cache"
    plain = tiny_options(tmp_path / "plain", four_cases, cache_dir, iterations=2, save_every=2)
    train(plain)
    options = tiny_options(tmp_path / "outline", four_cases, cache_dir, iterations=3, save_every=3, outline=True,
                           init_from=str(tmp_path / "plain" / "latest.pt"))
    train(options)
    model = load_model(tmp_path / "outline" / "latest.pt")
    assert model.config.outline and model.config.network.in_channels == 17
    # Resuming with the outline switched off is refused, not silently changed.
    with pytest.raises(PowdrError, match="--outline"):
        train(replace(options, iterations=4, outline=False, init_from=None, resume=True))
    # A refine stage keeps the first stage's outline; it cannot be given one.
    with pytest.raises(PowdrError, match="--outline applies to a first stage"):
        train(tiny_options(tmp_path / "r", four_cases, cache_dir, preset="tiny-refine", iterations=1, outline=True))
    # A guide must see what the first stage sees.
    with pytest.raises(CheckpointError, match="another grid, modality, diffusion or outline"):
        save_cascade(tmp_path / "outline" / "latest.pt", None, tmp_path / "x.pt",
                     guide_path=tmp_path / "plain" / "latest.pt")

    qa_data.sample_on_input_grid(brats_case, tmp_path / "outline" / "latest.pt", tmp_path / "samples", "--steps", 2,
                                 "--progress", "none")
