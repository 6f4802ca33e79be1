"""The model: wavelets, the conditional network, diffusion, samplers, presets and checkpoints."""
