"""``powdr-outpaint train`` on real BraTS cases with the tiny preset on the CPU.

Every run here is real training (forward, backward, AdamW, EMA, checkpoints); the
runs are short so the whole file stays within a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import qa_data

from powdr_outpaint.errors import PowdrError
from powdr_outpaint.model.checkpoint import load_model, read_checkpoint
from powdr_outpaint.training.stream import StepBatches, TrainingItems
from powdr_outpaint.training.train import TrainOptions, read_log, train

REPO = Path(__file__).resolve().parents[2]
BRATS = Path(os.environ.get("POWDR_BRATS_DIR", REPO.parent / "shared" / "data" / "brats18"))
TORCHRUN = Path(sys.executable).with_name("torchrun")
SIX = ndimage.generate_binary_structure(3, 1)


def brats_or_skip() -> list[Path]:
    folders = sorted(p for p in BRATS.iterdir() if p.is_dir()) if BRATS.is_dir() else []
    if not folders:
        pytest.skip(f"BraTS sample data not found at {BRATS} "
                    "(set POWDR_BRATS_DIR or place ../shared beside the repository)")
    return folders


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "PowdrOutpaint"), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "powdr_outpaint", *map(str, args)]


@pytest.fixture(scope="module")
def four_cases(tmp_path_factory) -> Path:
    """A data folder with the first four BraTS cases (links to the real files)."""
    return qa_data.linked_cases(brats_or_skip()[:4], tmp_path_factory.mktemp("four_cases"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    # Shared by the runs of this file so each case is prepared once.
    return tmp_path_factory.getbasetemp() / "train-cache"


def tiny_options(out: Path, data: Path, cache: Path, **changes) -> TrainOptions:
    options = TrainOptions(
        out=str(out), data=str(data), preset="tiny", iterations=8, save_every=4, snapshot_every=0,
        preview_every=0, threads=1, cache_dir=str(cache), progress="none", device="cpu",
    )
    return replace(options, **changes)


@pytest.fixture(scope="module")
def thirty_iterations(four_cases, cache_dir, tmp_path_factory):
    """The acceptance run: 30 iterations on 4 cases through the real command line."""
    out = tmp_path_factory.mktemp("run30")
    started = time.perf_counter()
    result = subprocess.run(
        command("train", "--data", four_cases, "--preset", "tiny", "--out", out, "--iterations", 30,
                "--save-every", 10, "--snapshot-every", 20, "--preview-every", 15, "--preview-steps", 4,
                "--cache-dir", cache_dir, "--device", "cpu", "--threads", 1, "--progress", "json"),
        capture_output=True, text=True, timeout=600, env=environment(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result, time.perf_counter() - started


def test_loss_goes_down_over_thirty_iterations(thirty_iterations):
    out, _, _ = thirty_iterations
    rows = read_log(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    losses = np.array([r["loss"] for r in rows])
    assert np.all(np.isfinite(losses))
    start, end = losses[:10].mean(), losses[-10:].mean()
    assert end < 0.8 * start, f"mean loss of the first 10 iterations {start:.4f}, of the last 10 {end:.4f}"
    assert all(r["lr"] > 0 for r in rows)
    times = [r["time"] for r in rows]
    assert times == sorted(times) and times[0] > 0


def test_run_folder_contents_and_progress(thirty_iterations):
    out, result, _ = thirty_iterations
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert names == sorted(["latest.pt", "snapshot_0000020.pt", "train_log.csv", "skipped_cases.csv",
                            "preview_0000015.png", "preview_0000030.png"])
    config, payload = read_checkpoint(out / "latest.pt")
    assert config.preset == "tiny" and config.training.strategy == "random"
    assert config.training.iterations == 30 and config.training.p_random == 1.0
    state = payload["training_state"]
    assert state["step"] == 30 and state["data"]["cases"] == [p.name for p in brats_or_skip()[:4]]
    # The sampling weights are the EMA, not the raw weights.
    assert any(not torch.equal(payload["weights"][k], state["model"][k]) for k in payload["weights"])
    snapshot, snap_payload = read_checkpoint(out / "snapshot_0000020.pt")
    assert snapshot.training.iterations == 20 and "training_state" not in snap_payload
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    progress = [line for line in lines if line.get("event") == "progress"]
    assert progress and progress[-1]["step"] == 30 and progress[-1]["total"] == 30
    assert all("loss" in p and p["it_per_s"] > 0 for p in progress)
    picture = Image.open(out / "preview_0000030.png")
    assert picture.format == "PNG" and picture.width > 3 * 48 and picture.height > 3 * 48
    # Three rows of panels: the sample row is not blank.
    pixels = np.asarray(picture.convert("L"), dtype=float)
    assert pixels.std() > 10


def test_latest_checkpoint_samples_on_the_input_grid(thirty_iterations, tmp_path):
    out, _, _ = thirty_iterations
    case = sorted(p for p in BRATS.iterdir() if p.is_dir())[0]
    image, mask = case / f"{case.name}_t1.nii.gz", case / f"{case.name}_seg.nii.gz"
    result = subprocess.run(
        command("sample", "--image", image, "--mask", mask, "--checkpoint", out / "latest.pt",
                "--samples", 2, "--steps", 4, "--device", "cpu", "--progress", "none", "--out", tmp_path),
        capture_output=True, text=True, timeout=600, env=environment(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = nib.load(str(image))
    outputs = sorted(tmp_path.glob("*.nii.gz"))
    assert len(outputs) == 5  # two samples, mean, std, lesion
    for path in outputs:
        written = nib.load(str(path))
        assert written.shape == reference.shape
        np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)
    metadata = json.loads(next(tmp_path.glob("*_outpaint.json")).read_text())
    assert metadata["config"]["training"]["strategy"] == "random"
    assert metadata["config"]["training"]["iterations"] == 30


def test_stop_and_resume_equals_an_uninterrupted_run(four_cases, cache_dir, tmp_path):
    # Mixed masks exercise both the tumour and the random branch of the data.
    whole = tiny_options(tmp_path / "whole", four_cases, cache_dir, condition="mixed", p_random=0.5,
                         iterations=9, save_every=3)
    # Previews in one run only: sampling them must not disturb the training stream.
    train(replace(whole, preview_every=4, preview_steps=2))
    assert (tmp_path / "whole" / "preview_0000008.png").is_file()
    parted = replace(whole, out=str(tmp_path / "parted"), iterations=5)
    first = train(parted)
    assert first.final_step == 5
    second = train(replace(parted, iterations=9, resume=True, condition=None, p_random=None))
    assert (second.start_step, second.final_step) == (5, 9)

    a = torch.load(tmp_path / "whole" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "parted" / "latest.pt", weights_only=True)
    assert a["training_state"]["step"] == b["training_state"]["step"] == 9
    for name in a["weights"]:
        torch.testing.assert_close(b["weights"][name], a["weights"][name], rtol=0, atol=1e-6)
        torch.testing.assert_close(b["training_state"]["model"][name], a["training_state"]["model"][name],
                                   rtol=0, atol=1e-6)
    moments_a = a["training_state"]["optimizer"]["state"]
    moments_b = b["training_state"]["optimizer"]["state"]
    for key in moments_a:
        torch.testing.assert_close(moments_b[key]["exp_avg_sq"], moments_a[key]["exp_avg_sq"], rtol=0, atol=1e-6)
    # The weights did move (these layers start at zero), so the comparison above means something.
    assert all(a["training_state"]["model"][k].abs().max() > 0 for k in a["weights"] if k.endswith("conv2.weight"))
    losses_a = [r["loss"] for r in read_log(tmp_path / "whole" / "train_log.csv")]
    losses_b = [r["loss"] for r in read_log(tmp_path / "parted" / "train_log.csv")]
    assert losses_a == losses_b and len(losses_a) == 9


def test_resume_refuses_changed_settings_and_finished_runs(four_cases, cache_dir, tmp_path):
    options = tiny_options(tmp_path / "run", four_cases, cache_dir, iterations=2, save_every=2)
    train(options)
    with pytest.raises(PowdrError, match="already holds a training run"):
        train(options)
    with pytest.raises(PowdrError, match="differs from the run being resumed"):
        train(replace(options, resume=True, learning_rate=0.5))
    done = train(replace(options, resume=True, data=None))
    assert done.start_step == done.final_step == 2
    with pytest.raises(PowdrError, match="does not exist"):
        train(replace(options, out=str(tmp_path / "fresh"), resume=True))


def test_kill_leaves_a_loadable_checkpoint_that_resumes(four_cases, cache_dir, tmp_path):
    out = tmp_path / "killed"
    args = ("--data", four_cases, "--preset", "tiny", "--out", out, "--save-every", 1, "--preview-every", 0,
            "--snapshot-every", 0, "--cache-dir", cache_dir, "--device", "cpu", "--threads", 1,
            "--progress", "none")
    process = subprocess.Popen(command("train", "--iterations", 500, *args), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        log = out / "train_log.csv"
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "latest.pt").exists() and log.exists() and len(log.read_text().splitlines()) > 4:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()[-2000:]
        process.send_signal(signal.SIGKILL)  # no chance to clean up
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    model = load_model(out / "latest.pt")
    saved = model.extra["training_state"]["step"]
    assert saved >= 3
    resumed = subprocess.run(command("train", "--iterations", saved + 2, "--resume", *args),
                             capture_output=True, text=True, timeout=600, env=environment())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = read_log(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, saved + 3))
    assert read_checkpoint(out / "latest.pt")[1]["training_state"]["step"] == saved + 2


def test_sigterm_saves_and_stops(four_cases, cache_dir, tmp_path):
    out = tmp_path / "stopped"
    process = subprocess.Popen(
        command("train", "--data", four_cases, "--preset", "tiny", "--out", out, "--iterations", 500,
                "--save-every", 1000, "--preview-every", 0, "--cache-dir", cache_dir, "--device", "cpu",
                "--threads", 1, "--progress", "json"),
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Wait for the first iteration's progress line, then ask the run to stop.
        for line in process.stdout:
            if json.loads(line).get("event") == "progress":
                break
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    step = read_checkpoint(out / "latest.pt")[1]["training_state"]["step"]
    assert 1 <= step < 500
    assert int(read_log(out / "train_log.csv")[-1]["step"]) == step


def test_no_usable_case_is_one_clear_error(tmp_path, cache_dir):
    folders = brats_or_skip()
    root = tmp_path / "data"
    for folder in folders[:2]:
        (root / folder.name).mkdir(parents=True)
        (root / folder.name / f"{folder.name}_t1.nii.gz").symlink_to(folder / f"{folder.name}_t1.nii.gz")
    result = subprocess.run(
        command("train", "--data", root, "--preset", "tiny", "--out", tmp_path / "out", "--iterations", 2,
                "--device", "cpu", "--cache-dir", cache_dir, "--progress", "none"),
        capture_output=True, text=True, timeout=300, env=environment(),
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("powdr-outpaint train: error: none of the 2 cases") and "Traceback" not in result.stderr
    assert "no segmentation" in result.stderr
    assert not (tmp_path / "out" / "latest.pt").exists()


def test_step_batches_shard_the_stream_without_overlap():
    world, batch = 3, 2
    seen: list[int] = []
    per_step: dict[int, list[int]] = {}
    for rank in range(world):
        for step, items in zip(range(4, 10), StepBatches(4, 10, batch, rank, world)):
            assert len(items) == batch
            per_step.setdefault(step, []).extend(items)
            seen.extend(items)
    assert len(seen) == len(set(seen)) == 6 * world * batch
    for step, items in per_step.items():
        assert sorted(items) == list(range(step * world * batch, (step + 1) * world * batch))


def test_training_items_follow_the_strategy(four_cases, cache_dir):
    from powdr_outpaint.model.checkpoint import ModelConfig
    from powdr_outpaint.training.data import CaseStore, PrepareSettings, discover_cases, prepare_all
    from powdr_outpaint.training.train import resolve_settings

    cases, _ = discover_cases(four_cases)
    usable, _ = prepare_all(cases, PrepareSettings(ModelConfig.from_preset("tiny")), cache_dir)
    store = CaseStore(usable)
    volumes = store.lesion_volumes

    def items(**changes) -> TrainingItems:
        options = tiny_options(Path("unused"), four_cases, cache_dir, **changes)
        return TrainingItems(store, resolve_settings(options, None), volumes)

    tumour = items(condition="tumor")
    for k in range(6):
        case = store.get(tumour.case_index(k))
        image, mask, brain = tumour[k]
        assert image.shape == mask.shape == brain.shape == (1, 48, 48, 32)
        np.testing.assert_array_equal(mask[0].numpy() > 0, case.lesion)
        # The brain the item carries (the outline a model trained with --outline sees) is the case's.
        np.testing.assert_array_equal(brain[0].numpy() > 0, case.foreground)
    # Every epoch visits every case once.
    assert sorted(tumour.case_index(k) for k in range(4, 8)) == [0, 1, 2, 3]

    random = items(condition="random")
    for k in range(12):
        case = store.get(random.case_index(k))
        mask = random[k][1][0].numpy() > 0
        assert ndimage.label(mask, structure=SIX)[1] == 1 and not (mask & ~case.foreground).any()
        assert min(abs(mask.sum() - v) / v for v in volumes) <= 0.1
        assert not np.array_equal(mask, case.lesion)
        np.testing.assert_array_equal(random[k][1].numpy(), items(condition="random")[k][1].numpy())

    mixed = items(condition="mixed", p_random=0.5)
    kinds = [np.array_equal(mixed[k][1][0].numpy() > 0, store.get(mixed.case_index(k)).lesion) for k in range(40)]
    assert 8 <= sum(kinds) <= 32

    dilated = items(condition="random", dilate=1)
    assert dilated[3][1].sum() > random[3][1].sum()


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.exists(), reason=f"torchrun not found beside {sys.executable}")
@pytest.mark.parametrize("modality", ["t1", "t1,t1ce,t2,flair"])
def test_torchrun_two_gloo_processes_write_one_checkpoint(four_cases, cache_dir, tmp_path, modality):
    out = tmp_path / "ddp"
    env = environment()
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [str(TORCHRUN), "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "powdr_outpaint", "train", "--data", str(four_cases),
         "--preset", "tiny", "--modality", modality, "--out", str(out), "--iterations", "4", "--save-every", "2",
         "--snapshot-every", "0", "--preview-every", "0", "--cache-dir", str(cache_dir), "--device", "cpu",
         "--threads", "1", "--progress", "none"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in out.glob("*.pt")) == ["latest.pt"]
    assert not list(out.glob(".*.part"))
    config, payload = read_checkpoint(out / "latest.pt")
    state = payload["training_state"]
    assert state["world_size"] == 2 and state["step"] == 4 and config.training.iterations == 4
    assert ",".join(config.sequences) == modality
    assert [int(r["step"]) for r in read_log(out / "train_log.csv")] == [1, 2, 3, 4]
    # One process prints the progress messages.
    assert result.stderr.count("Training tiny") == 1
    # The checkpoint is usable for sampling like any other.
    assert load_model(out / "latest.pt").config.training.strategy == "random"


def test_input_skip_run_trains_saves_resumes_and_samples(four_cases, cache_dir, tmp_path):
    """--input-skip starts from a plain x0 checkpoint (the skip adds no weights), stores the
    skip in the checkpoint's network, keeps it (and --low-noise-weight) on resume and refuses
    to drop or change them; the loss weights need the skip."""
    plain = train(tiny_options(tmp_path / "plain", four_cases, cache_dir, iterations=2, save_every=2))
    with pytest.raises(PowdrError, match="needs --input-skip"):
        train(tiny_options(tmp_path / "weighted", four_cases, cache_dir, iterations=2, low_noise_weight=5.0))
    options = tiny_options(tmp_path / "skip", four_cases, cache_dir, iterations=2, save_every=2,
                           input_skip=True, low_noise_weight=5.0, init_from=str(plain.latest))
    train(options)
    model = load_model(tmp_path / "skip" / "latest.pt")
    assert len(model.config.network.input_skip) == 2
    assert read_checkpoint(plain.latest)[0].network.input_skip == ()
    with pytest.raises(PowdrError, match="differs from the run being resumed"):
        train(replace(options, resume=True, input_skip=False, init_from=None, iterations=3))
    with pytest.raises(PowdrError, match="differs from the run being resumed"):
        train(replace(options, resume=True, low_noise_weight=2.0, init_from=None, iterations=3))
    resumed = train(replace(options, resume=True, input_skip=None, low_noise_weight=None, init_from=None,
                            data=None, iterations=3))
    assert resumed.final_step == 3
    assert load_model(tmp_path / "skip" / "latest.pt").config.network.input_skip == model.config.network.input_skip
    folder = brats_or_skip()[0]
    out = tmp_path / "sampled"
    result = subprocess.run(
        command("sample", "--image", folder / f"{folder.name}_t1.nii.gz", "--mask", folder / f"{folder.name}_seg.nii.gz",
                "--checkpoint", tmp_path / "skip" / "latest.pt", "--out", out, "--samples", 1, "--steps", 3,
                "--progress", "none"),
        capture_output=True, text=True, timeout=300, env=environment(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sample = nib.load(out / f"{folder.name}_t1_outpaint_s00.nii.gz")
    assert sample.shape == nib.load(folder / f"{folder.name}_t1.nii.gz").shape
    assert np.isfinite(np.asarray(sample.dataobj)).all()


def test_detail_scale_run_starts_from_an_unscaled_one_keeps_its_scale_and_samples(four_cases, cache_dir, tmp_path):
    """--detail-scale fine-tunes from an unscaled checkpoint, is stored in the checkpoint, is kept on
    resume and refused when changed, and the checkpoint samples on the input grid with the lesion kept."""
    plain = train(tiny_options(tmp_path / "plain", four_cases, cache_dir, iterations=2, save_every=2))
    with pytest.raises(PowdrError, match="--detail-scale must lie"):
        train(tiny_options(tmp_path / "bad", four_cases, cache_dir, detail_scale=0.0))
    options = tiny_options(tmp_path / "scaled", four_cases, cache_dir, iterations=2, save_every=2,
                           detail_scale=4.0, init_from=str(plain.latest))
    train(options)
    assert load_model(tmp_path / "scaled" / "latest.pt").config.normalisation.detail_scale == 4.0
    with pytest.raises(PowdrError, match="differs from the run being resumed"):
        train(replace(options, resume=True, detail_scale=2.0, init_from=None, iterations=3))
    resumed = train(replace(options, resume=True, detail_scale=None, init_from=None, iterations=3))
    assert resumed.final_step == 3
    assert load_model(tmp_path / "scaled" / "latest.pt").config.normalisation.detail_scale == 4.0
    folder = brats_or_skip()[0]
    image_path, mask_path = folder / f"{folder.name}_t1.nii.gz", folder / f"{folder.name}_seg.nii.gz"
    out = tmp_path / "sampled"
    result = subprocess.run(
        command("sample", "--image", image_path, "--mask", mask_path, "--checkpoint", tmp_path / "scaled" / "latest.pt",
                "--out", out, "--samples", 1, "--steps", 3, "--progress", "none"),
        capture_output=True, text=True, timeout=300, env=environment(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    original = nib.load(image_path)
    sample = nib.load(out / f"{folder.name}_t1_outpaint_s00.nii.gz")
    assert sample.shape == original.shape
    lesion = np.asarray(nib.load(mask_path).dataobj) > 0
    np.testing.assert_array_equal(np.asarray(sample.dataobj)[lesion], np.asarray(original.dataobj)[lesion])
