"""A history of generated images (Shrivastava et al. 2017), used by CycleGAN to update the
discriminators on a buffer of 50 earlier fakes rather than only the newest ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


class ImagePool:
    """Until the pool is full, each image is stored and returned. After that, with probability
    1/2 a stored image is returned and replaced by the new one, else the new one is returned.

    Randomness comes from the generator the caller passes (a checkpointed stream of the trainer);
    the stored images are part of the checkpointed training state, so a resumed run draws the same.
    """

    def __init__(self, size: int):
        self.size = size
        self.images: list[Tensor] = []

    def query(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.size == 0:
            return images
        images = images.detach()
        chosen = []
        for image in images:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                chosen.append(image)
                continue
            if torch.rand((), generator=generator).item() > 0.5:
                index = int(torch.randint(0, self.size, (), generator=generator))
                chosen.append(self.images[index].to(image.device, copy=True))
                self.images[index] = image.clone()
            else:
                chosen.append(image)
        return torch.cat(chosen, 0)

    def state_dict(self) -> dict[str, Any]:
        stored = torch.cat(self.images, 0).cpu() if self.images else torch.empty(0)
        return {"images": stored}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        stored = state["images"]
        self.images = [img.unsqueeze(0).to(device) for img in stored] if stored.numel() else []
