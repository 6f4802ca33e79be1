import builtins
import json
import subprocess
import sys

import pytest
import torch
from dataclasses import replace

from powdr_outpaint.errors import CheckpointError
from powdr_outpaint.model.checkpoint import (
    FORMAT,
    ModelConfig,
    initial_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from powdr_outpaint.model.network import OutpaintUNet


class _OpensAFile:
    """Unpickling this object creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_round_trip_restores_config_and_weights(tmp_path):
    path = initial_checkpoint(tmp_path / "tiny.pt", "tiny", seed=3)
    loaded = load_model(path)
    assert loaded.config == ModelConfig.from_preset("tiny")
    torch.manual_seed(3)
    reference = OutpaintUNet(loaded.config.network)
    assert set(reference.state_dict()) == set(loaded.network.state_dict())
    assert len(loaded.sha256) == 64


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "config": "{}", "weights": {}, "payload": _OpensAFile(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()
    # The same file does run code when loaded unsafely, so the check above can fail.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_command_line_refuses_pickled_code_in_one_sentence(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save(_OpensAFile(marker), path)
    result = subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", "info", "--checkpoint", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "refused" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_damaged_and_foreign_files_get_one_clear_error(tmp_path):
    good = initial_checkpoint(tmp_path / "good.pt", "tiny")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="damaged"):
        read_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch file"):
        read_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a PowdrOutpaint checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def _rewrite_config(source, target, change):
    payload = torch.load(source, weights_only=True)
    config = json.loads(payload["config"])
    change(config)
    payload["config"] = json.dumps(config)
    torch.save(payload, target)
    return target


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(format_version=99), "format version"),
        (lambda c: c["network"].update(channel_mult="1,2"), "list of numbers"),
        (lambda c: c["network"].update(unknown_field=1), "unknown fields"),
        (lambda c: c["grid"].update(shape=[47, 48, 32]), "multiple of"),
        (lambda c: c["diffusion"].update(schedule="cosine"), "noise schedule"),
        (lambda c: c["training"].update(strategy="magic"), "strategy"),
        (lambda c: c.pop("network"), "lacks the field"),
        (lambda c: c["normalisation"].update(detail_scale=0), "detail_scale"),
        (lambda c: c["normalisation"].update(detail_scale=100.0), "detail_scale"),
    ],
)
def test_invalid_configurations_are_explained(tmp_path, change, message):
    good = initial_checkpoint(tmp_path / "good.pt", "tiny")
    bad = _rewrite_config(good, tmp_path / "bad.pt", change)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(bad)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    good = initial_checkpoint(tmp_path / "good.pt", "tiny")
    config, payload = read_checkpoint(good)
    weights = dict(payload["weights"])
    weights["stem.weight"] = torch.zeros(3, 3)
    bad = save_checkpoint(tmp_path / "bad.pt", config, weights)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(bad)


def test_strip_keeps_config_and_sampling_weights_and_drops_training_state(tmp_path):
    config = ModelConfig.from_preset("tiny")
    weights = OutpaintUNet(config.network).state_dict()
    state = {"optimiser": {"m": torch.randn(50_000)}, "step": torch.tensor(7)}
    training = save_checkpoint(tmp_path / "latest.pt", config, weights, {"training_state": state})
    result = subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", "strip", "--checkpoint", str(training),
         "--out", str(tmp_path / "model.pt")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    stripped_config, payload = read_checkpoint(tmp_path / "model.pt")
    assert stripped_config == config
    assert "training_state" not in payload
    assert all(torch.equal(payload["weights"][k], v) for k, v in weights.items())
    assert (tmp_path / "model.pt").stat().st_size < training.stat().st_size
    same = subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", "strip", "--checkpoint", str(training), "--out", str(training)],
        capture_output=True, text=True,
    )
    assert same.returncode != 0 and "must differ" in same.stderr
    assert "training_state" in read_checkpoint(training)[1]


def test_detail_scale_travels_in_the_file_and_unscaled_files_read_as_before(tmp_path):
    """A first stage trained with scaled detail bands must be sampled with the same scale; files
    without it (every model before it, and unscaled models now) keep the layout older versions read."""
    config, payload = read_checkpoint(initial_checkpoint(tmp_path / "plain.pt", "tiny"))
    assert config.normalisation.detail_scale == 1.0
    assert "detail_scale" not in json.loads(payload["config"])["normalisation"]
    scaled = replace(config, normalisation=replace(config.normalisation, detail_scale=4.0))
    path = save_checkpoint(tmp_path / "scaled.pt", scaled, payload["weights"])
    loaded = load_model(path)
    assert loaded.config.normalisation.detail_scale == 4.0
    assert loaded.config.normalisation.subband_scale.detail == 4.0
    assert loaded.config.card()["detail_scale"] == 4.0
