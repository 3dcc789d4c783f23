#!/usr/bin/env python
"""Download a public CycleGAN dataset: ``python datasets/download.py vangogh2photo``.

A thin wrapper around :func:`gan_style.data.download.main`; see datasets/README.md.
"""

import sys
from pathlib import Path

try:
    from gan_style.data.download import main
except ImportError:
    # Run from a source checkout without `pip install -e .`: use the package next to this folder.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from gan_style.data.download import main

if __name__ == "__main__":
    sys.exit(main(prog="python datasets/download.py"))
