"""The schedule and samplers, checked against closed forms derived independently."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from powdr_outpaint.model.diffusion import (
    DiffusionConfig,
    Schedule,
    low_noise_weights,
    respaced_schedule,
    respaced_timesteps,
    x0_loss,
)
from powdr_outpaint.model.network import skip_weights
from powdr_outpaint.model.presets import get_preset
from powdr_outpaint.model.samplers import Sampler


@pytest.fixture(scope="module")
def schedule():
    return Schedule.from_config(DiffusionConfig())


def test_linear_betas_and_cumulative_product(schedule):
    assert schedule.num_steps == 1000
    assert schedule.betas[0] == pytest.approx(1e-4) and schedule.betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(schedule.betas), (0.02 - 1e-4) / 999)
    # abar_t = prod(1 - beta_s) computed in log space as an independent route.
    expected = np.exp(np.cumsum(np.log1p(-schedule.betas)))
    np.testing.assert_allclose(schedule.alphas_cumprod, expected, rtol=1e-12)
    assert schedule.alphas_cumprod[-1] < 1e-4  # the last step is nearly pure noise


def _bayes_posterior(abar_t, abar_prev):
    """q(x_prev | x_t, x0) from Gaussian conditioning, written as linear regression.

    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) e1;  x_t = sqrt(a) x_prev + sqrt(1 - a) e2,
    with a = abar_t / abar_prev. Condition the joint Gaussian of (x_prev, x_t) given x0.
    """
    a = abar_t / abar_prev
    var_prev = 1.0 - abar_prev
    var_t = a * var_prev + (1.0 - a)
    cov = np.sqrt(a) * var_prev
    gain = cov / var_t
    coef_xt = gain
    coef_x0 = np.sqrt(abar_prev) - gain * np.sqrt(abar_t)
    variance = var_prev - gain * cov
    return coef_x0, coef_xt, variance


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_posterior_matches_gaussian_conditioning(schedule, t):
    coef_x0, coef_xt, variance = _bayes_posterior(schedule.alphas_cumprod[t], schedule.alphas_cumprod[t - 1])
    assert schedule.posterior_mean_coef_x0[t] == pytest.approx(coef_x0, rel=1e-9)
    assert schedule.posterior_mean_coef_xt[t] == pytest.approx(coef_xt, rel=1e-9)
    assert schedule.posterior_variance[t] == pytest.approx(variance, rel=1e-9)


def test_q_sample_has_the_right_marginal(schedule):
    torch.manual_seed(0)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    t = torch.full((200_000,), 300)
    xt = schedule.q_sample(x0, t, torch.randn_like(x0))
    abar = schedule.alphas_cumprod[300]
    assert xt.mean().item() == pytest.approx(np.sqrt(abar) * 0.7, abs=5e-3)
    assert xt.var().item() == pytest.approx(1 - abar, rel=2e-2)


@pytest.mark.parametrize("k", [1, 2, 5, 50, 999, 1000])
def test_respaced_timesteps_are_evenly_spread(k):
    steps = respaced_timesteps(1000, k)
    assert len(steps) == k
    assert steps[-1] == 999 and (k == 1 or steps[0] == 0)
    assert np.all(np.diff(steps) > 0)


def test_respaced_schedule_keeps_the_marginals(schedule):
    kept = respaced_timesteps(1000, 25)
    respaced = respaced_schedule(schedule, kept)
    np.testing.assert_allclose(respaced.alphas_cumprod, schedule.alphas_cumprod[kept], rtol=1e-12)
    with pytest.raises(ValueError):
        respaced_timesteps(1000, 0)


def test_full_length_ddpm_uses_the_training_posterior(schedule):
    sampler = Sampler(schedule, "ddpm", 1000)
    np.testing.assert_allclose(sampler.respaced.posterior_variance, schedule.posterior_variance, rtol=1e-10)


@pytest.mark.parametrize("k", [10, 1000])
def test_ddim_with_eta_one_equals_ddpm_posterior(schedule, k):
    torch.manual_seed(0)
    xt, x0, noise = (torch.randn(2, 8, 4, 4, 4, dtype=torch.float64) for _ in range(3))
    ddpm = Sampler(schedule, "ddpm", k)
    ddim = Sampler(schedule, "ddim", k, eta=1.0)
    for index in (ddpm.num_steps - 1, ddpm.num_steps // 2, 1):
        torch.testing.assert_close(ddpm.step(xt, index, x0, noise), ddim.step(xt, index, x0, noise))


def test_deterministic_ddim_recovers_x0_from_its_own_noise(schedule):
    # With eta = 0 and a perfect x0 prediction the trajectory stays on the line through x0.
    torch.manual_seed(0)
    x0 = torch.randn(1, 8, 4, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    sampler = Sampler(schedule, "ddim", 20, eta=0.0)
    top = sampler.model_timestep(sampler.num_steps - 1)
    x = schedule.q_sample(x0, torch.tensor([top]), eps)
    for index in sampler.indices():
        assert not sampler.needs_noise(index)
        x = sampler.step(x, index, x0, None)
    torch.testing.assert_close(x, x0)


def test_last_step_returns_the_prediction(schedule):
    x0 = torch.randn(1, 8, 2, 2, 2, dtype=torch.float64)
    xt = torch.randn_like(x0)
    for kind in ("ddpm", "ddim"):
        torch.testing.assert_close(Sampler(schedule, kind, 10).step(xt, 0, x0, None), x0)


def test_unknown_sampler_is_refused(schedule):
    with pytest.raises(ValueError, match="unknown sampler"):
        Sampler(schedule, "euler", 10)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_a_single_step_sampler_returns_the_prediction(schedule, kind):
    sampler = Sampler(schedule, kind, 1)
    assert sampler.indices() == [0] and sampler.model_timestep(0) == 999
    x0 = torch.randn(1, 8, 2, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(sampler.step(torch.randn_like(x0), 0, x0, None), x0)


# ------------------------------------------------------------------ DPM-Solver++(2M)


def _gaussian_case(schedule, mu=0.3, s=0.5):
    """Data x0 ~ N(mu, s^2): the exact x0 predictor and the exact probability-flow ODE end point.

    For Gaussian data E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu),
    and the ODE keeps every point's standard score, so a chain started at x_T ends (after the
    last step's prediction at t = 0) at a known value.
    """
    abar = schedule.alphas_cumprod

    def predictor(x, t):
        alpha, sigma2 = np.sqrt(abar[t]), 1.0 - abar[t]
        return mu + alpha * s**2 / (alpha**2 * s**2 + sigma2) * (x - alpha * mu)

    def exact(x_top, top, bottom):
        def spread(t):
            return np.sqrt(abar[t] * s**2 + 1.0 - abar[t])

        z = (x_top - np.sqrt(abar[top]) * mu) / spread(top)
        x_bottom = np.sqrt(abar[bottom]) * mu + spread(bottom) * z
        return predictor(x_bottom, bottom)

    return predictor, exact


def _run_chain(schedule, kind, steps, x, predictor):
    sampler = Sampler(schedule, kind, steps)
    for index in sampler.indices():
        x0 = predictor(x, sampler.model_timestep(index))
        x = sampler.step(x, index, x0, None)
    return x


def test_dpm_solver_reaches_the_exact_ode_end_point_in_few_steps(schedule):
    """Ten solver steps land closer to the ODE's exact end point than a hundred DDIM steps."""
    predictor, exact = _gaussian_case(schedule)
    torch.manual_seed(0)
    x_top = torch.randn(4096, dtype=torch.float64)
    target = exact(x_top, 999, 0)

    def error(kind, k):
        return float((_run_chain(schedule, kind, k, x_top.clone(), predictor) - target).abs().max())

    for k in (10, 40):
        assert error("dpm++2m", k) < error("ddim", 10 * k)
    assert error("dpm++2m", 40) < 0.01 and error("dpm++2m", 200) < error("dpm++2m", 40)


def test_dpm_solver_steps_are_even_in_log_snr(schedule):
    from powdr_outpaint.model.samplers import log_snr_timesteps

    kept = log_snr_timesteps(schedule, 12)
    assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 12 and np.all(np.diff(kept) > 0)
    abar = schedule.alphas_cumprod[kept]
    steps = np.diff(0.5 * np.log(abar / (1 - abar)))
    sizes = -steps
    assert np.all(sizes > 0) and sizes.max() / sizes.min() < 1.6  # alike, up to integer rounding


def test_dpm_solver_first_step_is_ddim_and_last_returns_the_prediction(schedule):
    torch.manual_seed(0)
    xt, x0 = torch.randn(2, 8, 2, 2, 2, dtype=torch.float64), torch.randn(2, 8, 2, 2, 2, dtype=torch.float64)
    solver, ddim = Sampler(schedule, "dpm++2m", 12), Sampler(schedule, "ddim", 12, eta=0.0)
    top = solver.num_steps - 1
    assert not any(solver.needs_noise(i) for i in solver.indices())
    torch.testing.assert_close(solver.step(xt, top, x0, None), ddim.step(xt, top, x0, None))
    torch.testing.assert_close(Sampler(schedule, "dpm++2m", 12).step(xt, 0, x0, None), x0)
    # A new chain forgets the previous one: its first step is DDIM again.
    torch.testing.assert_close(solver.step(xt, top, x0, None), ddim.step(xt, top, x0, None))


def test_low_noise_weights_lift_the_clean_end_and_keep_the_noisy_end():
    _, c_out, _ = skip_weights(replace(get_preset("tiny").network, input_skip=(0.88, 0.13)), DiffusionConfig())
    t = torch.arange(1000)
    weights = low_noise_weights(c_out, t, 5.0)
    assert weights.shape == (1000, 8)
    assert torch.allclose(weights[-1], torch.ones(8), atol=1e-3)  # pure noise keeps weight 1
    assert torch.allclose(weights[0], torch.full((8,), 5.0))  # nearly clean: capped
    assert (weights[1:] <= weights[:-1] + 1e-6).all()  # never more weight for more noise
    # the low-pass subband (larger RMS) reaches the cap at noisier timesteps than the detail
    assert int((weights[:, 0] >= 5.0).sum()) > int((weights[:, 1] >= 5.0).sum()) > 0
    prediction, target = torch.randn(2, 8, 4, 4, 4), torch.randn(2, 8, 4, 4, 4)
    assert torch.allclose(x0_loss(prediction, target, torch.ones(2, 8)), x0_loss(prediction, target))
    doubled = x0_loss(prediction, target, torch.full((2, 8), 2.0))
    assert torch.allclose(doubled, 2 * x0_loss(prediction, target))
