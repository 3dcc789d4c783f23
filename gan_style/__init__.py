"""gan_style: unpaired image-to-image translation and style transfer in PyTorch.

    import gan_style
    model = gan_style.load("runs/my-run")          # a run folder, a gan_style .pt, or an official .pth
    painting = model.translate(Image.open("photo.jpg"))

``gan_style.load`` and ``gan_style.Model`` are imported on first use, so that ``import gan_style``
(and the ``gan-style`` command) stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Model", "load", "__version__"]

if TYPE_CHECKING:
    from gan_style.api import Model, load


def __getattr__(name: str) -> Any:
    if name in ("load", "Model"):
        from gan_style import api

        return getattr(api, name)
    raise AttributeError(f"module 'gan_style' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
