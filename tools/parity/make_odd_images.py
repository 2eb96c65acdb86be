#!/usr/bin/env python3
"""Writes the unusual image files the robustness tests decode (tests/fixtures/images/odd/, a few
KB, committed): formats and modes that real datasets contain but the other fixtures do not.

    python tools/parity/make_odd_images.py

  cmyk.jpg          a CMYK JPEG (as written by print workflows), 40x30, left half cyan-ish
  animated.gif      two frames, 24x16: the first red, the second blue
  grey16.png        16-bit greyscale PNG, 20x10, a horizontal ramp
"""

from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "tests/fixtures/images/odd"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cmyk = Image.new("CMYK", (40, 30), (0, 0, 0, 0))
    cmyk.paste((200, 0, 0, 0), (0, 0, 20, 30))
    cmyk.save(OUT / "cmyk.jpg", quality=95)

    red = Image.new("RGB", (24, 16), (255, 0, 0))
    blue = Image.new("RGB", (24, 16), (0, 0, 255))
    red.save(OUT / "animated.gif", save_all=True, append_images=[blue], duration=100, loop=0)

    ramp = np.tile(np.linspace(0, 65535, 20, dtype=np.uint16), (10, 1))
    Image.fromarray(ramp).save(OUT / "grey16.png")
    for f in sorted(OUT.iterdir()):
        print(f.name, f.stat().st_size, "bytes", Image.open(f).mode, Image.open(f).size)


if __name__ == "__main__":
    main()
