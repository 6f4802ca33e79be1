"""Autoguidance: a weaker first stage held in the checkpoint guides the first stage
(``cascade --guide``, ``sample --guidance``).

What a user relies on: the guided prediction is exactly guide + w (first - guide), on the
steps from the stored start timestep up and the first stage's alone below it; a guide
that equals the first stage, or weight 1, gives back the first stage's samples bit for bit; a
real guide changes the samples and never the lesion; the file says which weight it was made
for, the run says which weight it used, and a wrong guide or weight is refused in one sentence
before anything is written.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_expert import _assert_changes_new_tissue_only, _expert, _sample
from test_train import command, environment

from powdr_outpaint.errors import CheckpointError
from powdr_outpaint.model.checkpoint import initial_checkpoint, load_model, save_cascade
from powdr_outpaint.model.runtime import AutoGuidance


def test_guided_prediction_steps_past_the_first_stage_away_from_the_guide():
    x = torch.randn(3, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500, 0])
    first = lambda x, t: x[:, :8] * 2.0  # noqa: E731 - two stand-in networks
    guide = lambda x, t: x[:, :8] - 1.0  # noqa: E731
    torch.testing.assert_close(AutoGuidance(first, guide, 2.5)(x, t), guide(x, t) + 2.5 * (first(x, t) - guide(x, t)))
    torch.testing.assert_close(AutoGuidance(first, guide, 1.0)(x, t), first(x, t))


def test_guidance_leaves_the_steps_below_its_start_to_the_first_stage_and_skips_the_guide_there():
    x = torch.randn(3, 16, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    calls = []
    first = lambda x, t: x[:, :8] * 2.0  # noqa: E731

    def guide(x, t):
        calls.append(t)
        return x[:, :8] - 1.0

    guided = AutoGuidance(first, guide, 2.5, from_timestep=30)
    mixed = guided(x, torch.tensor([999, 30, 29]))
    expected = (x[:, :8] - 1.0) + 2.5 * (first(x, None) - (x[:, :8] - 1.0))
    torch.testing.assert_close(mixed[:2], expected[:2])
    torch.testing.assert_close(mixed[2], first(x, None)[2])
    calls.clear()
    torch.testing.assert_close(guided(x, torch.tensor([10, 0, 29])), first(x, None))
    assert calls == []  # the last steps cost one network call, not two


def test_detail_guidance_keeps_the_first_stages_low_pass_band_of_every_sequence():
    """Guiding the detail only: the low-pass subband of each sequence (the first S of the 8 S
    channels) is the first stage's own; the seven detail subbands are guided as before."""
    x = torch.randn(2, 32, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([999, 500])
    first = lambda x, t: x[:, :16] * 2.0  # noqa: E731 - two sequences: 16 subbands
    guide = lambda x, t: x[:, :16] - 1.0  # noqa: E731
    everything = AutoGuidance(first, guide, 3.0)(x, t)
    detail = AutoGuidance(first, guide, 3.0, bands="detail")(x, t)
    torch.testing.assert_close(detail[:, :2], first(x, t)[:, :2])
    torch.testing.assert_close(detail[:, 2:], everything[:, 2:])
    assert not torch.allclose(everything[:, :2], first(x, t)[:, :2])
    with pytest.raises(ValueError):
        AutoGuidance(first, guide, 3.0, bands="low")


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("guide")
    return {
        "first": initial_checkpoint(folder / "first.pt", "tiny", seed=0),
        "refine": initial_checkpoint(folder / "refine.pt", "tiny-refine", seed=1),
        "guide": initial_checkpoint(folder / "guide.pt", "tiny", seed=5),
    }


def test_cascade_stores_the_guide_and_its_weight_and_refuses_what_cannot_guide(stages, tmp_path):
    guided = save_cascade(stages["first"], stages["refine"], tmp_path / "g.pt", guide_path=stages["guide"])
    model = load_model(guided)
    assert model.guide is not None and model.guidance == 2.0 and model.refiner is not None
    assert model.guidance_from == 30 and model.guided_bands == "detail"
    assert load_model(save_cascade(guided, None, tmp_path / "a.pt", guided_bands="all")).guided_bands == "all"
    # Re-weighing keeps the guide (and the refine stage) of the --first file.
    reweighed = load_model(save_cascade(guided, None, tmp_path / "w.pt", guidance=1.5))
    assert reweighed.guidance == 1.5 and reweighed.refiner is not None and reweighed.guidance_from == 30
    assert load_model(save_cascade(guided, None, tmp_path / "f.pt", guidance_from=0)).guidance_from == 0
    assert all(torch.equal(a, b) for a, b in zip(reweighed.guide.network.state_dict().values(),
                                                 model.guide.network.state_dict().values()))

    with pytest.raises(CheckpointError, match="is not a whole first stage, so it cannot guide one"):
        save_cascade(stages["first"], None, tmp_path / "x.pt", guide_path=_expert(tmp_path / "e.pt"))
    with pytest.raises(CheckpointError, match="another grid, modality, diffusion or outline"):
        save_cascade(stages["first"], None, tmp_path / "x.pt",
                     guide_path=initial_checkpoint(tmp_path / "demo.pt", "demo"))
    with pytest.raises(CheckpointError, match="must be a number from 1 to 10"):
        save_cascade(stages["first"], None, tmp_path / "x.pt", guide_path=stages["guide"], guidance=11)
    with pytest.raises(CheckpointError, match="a guidance weight needs a guide"):
        save_cascade(stages["first"], stages["refine"], tmp_path / "x.pt", guidance=2)
    with pytest.raises(CheckpointError, match="the guidance start of the cascade must be a whole timestep from 0 to"):
        save_cascade(stages["first"], None, tmp_path / "x.pt", guide_path=stages["guide"], guidance_from=1001)
    with pytest.raises(CheckpointError, match="a guidance start needs a guide"):
        save_cascade(stages["first"], stages["refine"], tmp_path / "x.pt", guidance_from=30)
    with pytest.raises(CheckpointError, match="guided subbands need a guide"):
        save_cascade(stages["first"], stages["refine"], tmp_path / "x.pt", guided_bands="detail")
    with pytest.raises(CheckpointError, match="the guided subbands of the cascade must be one of all, detail"):
        save_cascade(stages["first"], None, tmp_path / "x.pt", guide_path=stages["guide"], guided_bands="low")
    assert not (tmp_path / "x.pt").exists()


def test_a_file_with_a_tampered_weight_is_refused_in_one_sentence(stages, tmp_path):
    payload = torch.load(save_cascade(stages["first"], None, tmp_path / "g.pt", guide_path=stages["guide"]),
                         weights_only=True)
    for bad in ("2", 0.5, float("nan")):
        payload["guide"]["weight"] = bad
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="the guidance weight of bad.pt must be a number from 1 to 10"):
            load_model(tmp_path / "bad.pt")
    payload["guide"]["weight"] = 2.0
    for bad in (-1, "30", 30.0, 1001, True):
        payload["guide"]["from_timestep"] = bad
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="the guidance start of bad.pt must be a whole timestep from 0 to 1000"):
            load_model(tmp_path / "bad.pt")
    # Files written before the start existed guide every step, as they did then.
    del payload["guide"]["from_timestep"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").guidance_from == 0
    payload["guide"]["from_timestep"] = 30
    for bad in ("low", 1, None):
        payload["guide"]["bands"] = bad
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="the guided subbands of bad.pt must be one of all, detail"):
            load_model(tmp_path / "bad.pt")
    # ... and on every subband.
    del payload["guide"]["bands"], payload["guide"]["from_timestep"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").guided_bands == "all"


def test_info_shows_the_guide(stages, tmp_path):
    path = save_cascade(stages["first"], None, tmp_path / "g.pt", guide_path=stages["guide"], guidance=3)
    result = subprocess.run(command("info", "--checkpoint", path, "--json"), capture_output=True, text=True,
                            timeout=120, env=environment())
    assert result.returncode == 0, result.stderr[-2000:]
    card = json.loads(result.stdout)
    assert card["guide"]["weight"] == 3.0 and card["guide"]["parameters"] == card["parameters"]
    assert card["guide"]["from_timestep"] == 30 and card["guide"]["bands"] == "detail"


def test_guidance_changes_the_new_tissue_only_and_weight_one_is_the_first_stage(stages, brats_case, tmp_path):
    first = stages["first"]
    alone, recorded = _sample(brats_case, first, tmp_path / "alone")
    assert recorded["guidance"] == 1.0
    # A guide equal to the first stage leaves nothing to step past: the same sample, bit for bit.
    itself = save_cascade(first, None, tmp_path / "itself.pt", guide_path=first, guidance=3)
    same, recorded = _sample(brats_case, itself, tmp_path / "same")
    assert recorded["guidance"] == 3.0
    np.testing.assert_array_equal(same, alone)

    guided = save_cascade(first, None, tmp_path / "guided.pt", guide_path=stages["guide"])
    changed, recorded = _sample(brats_case, guided, tmp_path / "changed")
    assert recorded["guidance"] == 2.0 and recorded["guidance_from"] == 30 and recorded["guided_bands"] == "detail"
    # Guiding the low-pass band too is another sample.
    everything, recorded = _sample(brats_case, guided, tmp_path / "all", "--guided-bands", "all")
    assert recorded["guided_bands"] == "all"
    assert np.abs(everything - changed).max() > 0
    unguided, recorded = _sample(brats_case, guided, tmp_path / "unguided", "--guidance", 1)
    assert recorded["guidance"] == 1.0
    np.testing.assert_array_equal(unguided, alone)
    # No step starts at timestep 1000 or above: guided from there is not guided at all.
    late, recorded = _sample(brats_case, guided, tmp_path / "late", "--guidance-from", 1000)
    assert recorded["guidance_from"] == 1000
    np.testing.assert_array_equal(late, alone)
    _assert_changes_new_tissue_only(brats_case, changed, alone)


def test_a_guidance_weight_out_of_range_or_without_a_guide_is_refused(stages, brats_case, tmp_path):
    def refused(weight: float, out: Path, *extra: object, checkpoint: Path = stages["first"]) -> str:
        result = subprocess.run(
            command("sample", "--image", brats_case["image"], "--mask", brats_case["mask"], "--checkpoint",
                    checkpoint, "--guidance", weight, "--steps", 2, "--progress", "none", "--out", out, *extra),
            capture_output=True, text=True, timeout=300, env=environment(),
        )
        assert result.returncode != 0
        assert not any(out.glob("*.nii.gz"))
        return result.stderr

    assert "--guidance must lie from 1 to 10" in refused(0.5, tmp_path / "out")
    # A weight for a checkpoint that holds no guide would change nothing: refused, not ignored.
    assert "--guidance 2 needs a checkpoint with a guide, and first.pt has none" in refused(2, tmp_path / "none")
    assert "--guidance-from needs a checkpoint with a guide, and first.pt has none" in refused(
        1, tmp_path / "from", "--guidance-from", 30)
    assert "--guided-bands needs a checkpoint with a guide, and first.pt has none" in refused(
        1, tmp_path / "bands", "--guided-bands", "detail")
    guided = save_cascade(stages["first"], None, tmp_path / "g.pt", guide_path=stages["guide"])
    assert "--guidance-from must lie from 0 to 1000" in refused(
        2, tmp_path / "past", "--guidance-from", 1001, checkpoint=guided)


def test_the_demo_guide_preset_guides_a_demo_first_stage_at_a_quarter_of_its_size(tmp_path):
    first = initial_checkpoint(tmp_path / "demo.pt", "demo", seed=0)
    guide = initial_checkpoint(tmp_path / "guide.pt", "demo-guide", seed=1)
    model = load_model(save_cascade(first, None, tmp_path / "g.pt", guide_path=guide, guidance=3, guidance_from=10))
    assert (model.guidance, model.guidance_from) == (3.0, 10)
    main_size = sum(p.numel() for p in model.network.parameters())
    guide_size = sum(p.numel() for p in model.guide.network.parameters())
    assert guide_size < 0.3 * main_size
