"""The one-command demo, shortened: MNI152 template, bundled model, QA outputs."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from powdr_outpaint.commands.demo import demo_checkpoint_path, make_demo_inputs
from powdr_outpaint.model.checkpoint import read_checkpoint


def test_bundled_demo_model_is_a_trained_checkpoint():
    path = demo_checkpoint_path()
    assert path.stat().st_size < 25 * 2**20
    config, _ = read_checkpoint(path)
    assert config.preset == "demo"
    assert config.training.strategy == "random"
    assert config.training.iterations > 0


def test_demo_inputs_are_reproducible(tmp_path):
    _, first = make_demo_inputs(tmp_path / "a")
    _, second = make_demo_inputs(tmp_path / "b")
    a = np.asanyarray(nib.load(str(first)).dataobj)
    assert np.array_equal(a, np.asanyarray(nib.load(str(second)).dataobj))
    assert a.sum() > 1000


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", "demo", "--out", str(out), "--samples", "2", "--steps", "3",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "qa_report.png" in result.stdout
    # The printout says what the bundled model is for, and the realism figures are in the table.
    printed = " ".join(result.stdout.split())  # as read, whatever the line wrapping
    assert "About the bundled model" in printed and "not to train or evaluate" in printed
    assert "high-frequency ratio" in result.stdout and "histogram distance" in result.stdout
    metrics = json.loads((out / "qa_metrics.json").read_text())
    assert metrics["lesion"]["max_abs_diff"] == 0.0
    assert metrics["samples"] == 2
    assert (out / "qa_report.png").stat().st_size > 10_000
    sample = nib.load(str(next((out / "samples").glob("*_outpaint_s00.nii.gz"))))
    template = nib.load(str(out / "inputs" / "mni152_t1.nii.gz"))
    assert sample.shape == template.shape
    np.testing.assert_allclose(sample.affine, template.affine, atol=1e-5)
