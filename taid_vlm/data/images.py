"""Every PIL image mode to the 8-bit RGB a processor expects, faithfully.

``Image.convert("RGB")`` is only right for 8-bit modes: it clips 16-bit and 32-bit grey to
255 (a 16-bit scan turns almost white), drops alpha onto black instead of a background, and
takes the current frame of an animation without a word. Here:
- 16-bit / 32-bit integer grey (``I;16*``, ``I``) is scaled from its bit depth to 0..255;
- float grey (``F``) is read as 0..1 when it lies there, else clipped to 0..255;
- alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, palette transparency) is composited on a
  white background, as a viewer shows it;
- LAB goes through a colour-managed transform (``convert`` would read its channels as RGB);
- CMYK, YCbCr, HSV, palette and 1-bit go through PIL's own conversions;
- an animation (GIF, APNG, multi-page TIFF) gives its first frame, and a warning says so.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

BACKGROUND = (255, 255, 255)


class FirstFrameWarning(UserWarning):
    """An animated or multi-page image was reduced to its first frame."""


def to_rgb(image: Image.Image, source: str = "image") -> Image.Image:
    """An 8-bit RGB copy of ``image`` (any mode); ``source`` names it in the warning."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        image.seek(0)
        warnings.warn(f"{source} has {frames} frames; the first is used", FirstFrameWarning, stacklevel=2)
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I") or mode == "F":
        return _deep_grey(image).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBa", "La"):  # premultiplied alpha
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        return ImageCms.applyTransform(image, ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"))
    return image.convert("RGB")


def _deep_grey(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey scaled to 8 bits by its range, not clipped."""
    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float64)
        scaled = values * 255.0 if values.size and np.nanmin(values) >= 0 and np.nanmax(values) <= 1 else values
    else:
        values = values.astype(np.int64)
        top = int(values.max()) if values.size else 0
        if image.mode.startswith("I;16"):
            depth = 65535
        elif top <= 255:
            depth = 255  # a 32-bit "I" image holding 8-bit values (how PIL opens some 8-bit PNGs)
        elif top <= 65535:
            depth = 65535  # 16-bit PNGs open as "I"
        else:
            depth = 2**32 - 1
        scaled = values * (255.0 / depth)
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8), mode="L")

