"""PowdrOutpaint engine: pathology-preserving outpainting of 3-D MRI with a
conditional wavelet diffusion model (plain Python and PyTorch; no Slicer, no Qt)."""

__version__ = "0.1.0"
