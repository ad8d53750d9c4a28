"""scikit-learn's digits (1,797 8x8 greyscale images, 10 classes) as image folders for
`sft-train --task image-classification`:

    python examples/make_digits_data.py OUT_DIR   # OUT_DIR/train/<digit>/*.png, OUT_DIR/eval/<digit>/*.png

A stratified 80/20 split with a fixed seed (1,437 train, 360 eval). Pixel values 0-16 are scaled to 0-255.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write_digits(out: Path, eval_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train, evals = train_test_split(index, test_size=eval_fraction, random_state=seed, stratify=digits.target)
    for split, rows in (("train", train), ("eval", evals)):
        for i in sorted(rows):
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return {"train": len(train), "eval": len(evals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write train/ and eval/ into")
    args = parser.parse_args()
    counts = write_digits(args.out)
    print(f"wrote {counts['train']} train and {counts['eval']} eval images under {args.out}")


if __name__ == "__main__":
    main()
