"""The registry of training methods: name -> "module:Class", imported on first use so that
``gan-style`` starts fast and a method's optional dependencies load only when it is used."""

from __future__ import annotations

import importlib

from gan_style.engine.contract import Method

METHODS: dict[str, str] = {
    "cyclegan": "gan_style.methods.cyclegan:CycleGAN",
    "cut": "gan_style.methods.cut:CUT",
    "fastcut": "gan_style.methods.cut:FastCUT",
    "sincut": "gan_style.methods.cut:SinCUT",
    "adain": "gan_style.methods.nst.adain:AdaINTraining",
    "munit": "gan_style.methods.munit:MUNIT",
    "swapae": "gan_style.methods.swapae:SwapAE",
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        from gan_style.errors import UserError

        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    module_name, _, class_name = METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
