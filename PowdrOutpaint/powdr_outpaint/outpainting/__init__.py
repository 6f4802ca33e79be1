"""Outpainting: one case, a cascade's refine stage, many cases, and export as a training set."""
