"""Single-image style transfer baselines: Gatys et al. (gatys.py) and AdaIN (adain.py); the ``gan-style stylize`` command (stylize.py)."""
