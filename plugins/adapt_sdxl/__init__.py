"""SDXL 1.0 (and a tiny SDXL-shaped test model) as model families of adapt, in kohya's format."""
