"""Geometry and files: reading and writing volumes, the model grid and back, lesion masks."""
