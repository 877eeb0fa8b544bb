"""Every PIL mode reaches the processor as faithful 8-bit RGB (data/images.py via load_image)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from taid_vlm.data import load_image
from taid_vlm.data.images import FirstFrameWarning, to_rgb


def pixel(image: Image.Image) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel((0, 0))


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("RGB", (2, 2), (10, 20, 30)), (10, 20, 30)),
    (lambda: Image.new("L", (2, 2), 77), (77, 77, 77)),
    (lambda: Image.new("1", (2, 2), 1), (255, 255, 255)),
    # 16-bit grey: scaled by its depth, not clipped to white (convert("RGB") gives 255 for both)
    (lambda: Image.fromarray(np.full((2, 2), 32768, np.uint16)), (128, 128, 128)),
    (lambda: Image.fromarray(np.full((2, 2), 65535, np.uint16)), (255, 255, 255)),
    (lambda: Image.new("I", (2, 2), 40000), (156, 156, 156)),  # 16-bit PNGs open as "I"
    (lambda: Image.new("I", (2, 2), 200), (200, 200, 200)),  # 8-bit values held in "I"
    (lambda: Image.new("F", (2, 2), 0.5), (128, 128, 128)),  # float in [0, 1]
    # alpha composited on white, as a viewer shows it (convert("RGB") drops it onto black)
    (lambda: Image.new("RGBA", (2, 2), (0, 0, 0, 0)), (255, 255, 255)),
    (lambda: Image.new("RGBA", (2, 2), (255, 0, 0, 255)), (255, 0, 0)),
    (lambda: Image.new("LA", (2, 2), (0, 128)), (127, 127, 127)),
    (lambda: Image.new("RGBa", (2, 2), (0, 0, 0, 0)), (255, 255, 255)),
    (lambda: Image.new("CMYK", (2, 2), (0, 255, 255, 0)), (255, 0, 0)),
    (lambda: Image.new("YCbCr", (2, 2), (255, 128, 128)), (255, 255, 255)),
    (lambda: Image.new("HSV", (2, 2), (0, 255, 255)), (255, 0, 0)),
])
def test_every_mode_converts_faithfully(make, expected):
    assert pixel(to_rgb(make())) == pytest.approx(expected, abs=1)


def test_palette_with_transparency_is_composited():
    image = Image.new("P", (2, 2), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    assert pixel(to_rgb(image)) == (255, 255, 255)


def test_lab_is_colour_managed():
    grey = to_rgb(Image.new("LAB", (2, 2), (128, 128, 128)))  # L=50, a=b=0: a mid grey
    r, g, b = pixel(grey)
    assert abs(r - g) <= 2 and abs(g - b) <= 2 and 100 < r < 140


def test_animation_gives_its_first_frame_and_says_so(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with pytest.warns(FirstFrameWarning, match=r"anim.gif has 2 frames; the first is used"):
        image = load_image(path)
    assert pixel(image) == pytest.approx((255, 0, 0), abs=2)


def test_16_bit_png_from_disk(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 3), 16384, np.uint16)).save(path)
    assert pixel(load_image(path)) == pytest.approx((64, 64, 64), abs=1)


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "cut.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(OSError, match="cut.png"):
        load_image(path)
