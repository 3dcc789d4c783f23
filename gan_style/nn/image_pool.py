"""A history of generated images (Shrivastava et al. 2017), used by CycleGAN to update the
discriminators on a buffer of 50 earlier fakes rather than only the newest ones."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor


class ImagePool:
    """Until the pool is full, each image is stored and returned. After that, with probability
    1/2 a stored image is returned and replaced by the new one, else the new one is returned.

    Randomness comes from the pool's own generator, so the pool is part of the checkpointed
    training state (contents and generator) and a resumed run draws the same images.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: list[Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: Tensor) -> Tensor:
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
            if torch.rand((), generator=self.generator).item() > 0.5:
                index = int(torch.randint(0, self.size, (), generator=self.generator))
                chosen.append(self.images[index].to(image.device, copy=True))
                self.images[index] = image.clone()
            else:
                chosen.append(image)
        return torch.cat(chosen, 0)

    def state_dict(self) -> dict[str, Any]:
        stored = torch.cat(self.images, 0).cpu() if self.images else torch.empty(0)
        return {"images": stored, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        stored = state["images"]
        self.images = [img.unsqueeze(0).to(device) for img in stored] if stored.numel() else []
        self.generator.set_state(state["generator"])
