"""A grid of translations: one row per input image (the input first), one column per random style
(MUNIT) or per texture image (the Swapping Autoencoder).

    python eval/style_grid.py --checkpoint RUN --input photos/ --num-styles 5 --direction BtoA --output grid.png
    python eval/style_grid.py --checkpoint RUN --input photos/ --texture paintings/ --output grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

import gan_style
from gan_style.data.images import find_images, load_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True, help="a folder of images (rows)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--num-styles", type=int, default=5, help="MUNIT: random styles (columns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texture", help="Swapping Autoencoder: a folder of texture images (columns)")
    parser.add_argument("--direction", default="AtoB")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    model = gan_style.load(args.checkpoint, device="cpu")
    resize = lambda image: image.resize((args.size, args.size), Image.Resampling.BICUBIC)  # noqa: E731
    rows = [resize(load_rgb(p)) for p in find_images(args.input)[: args.rows]]
    if args.texture:
        textures = [resize(load_rgb(p)) for p in find_images(args.texture)[: args.num_styles]]
        columns = [lambda image, t=t: model.swap(image, t) for t in textures]
        header = [None, *textures]
    else:
        columns = [lambda image, k=k: model.translate(image, direction=args.direction, seed=args.seed, style_number=k) for k in range(args.num_styles)]
        header = []
    grid = Image.new("RGB", ((len(columns) + 1) * args.size, (len(rows) + bool(header)) * args.size), "white")
    for column, image in enumerate(header):
        if image is not None:
            grid.paste(image, (column * args.size, 0))
    for row, image in enumerate(rows, int(bool(header))):
        grid.paste(image, (0, row * args.size))
        for column, translate in enumerate(columns, 1):
            grid.paste(translate(image), (column * args.size, row * args.size))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
