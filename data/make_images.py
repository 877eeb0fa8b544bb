"""Rebuild data/images/ from the photographs in scikit-image's wheel (run from the repo root;
the output is committed, so nothing else needs scikit-image).

    pip install scikit-image   # the images ship inside the wheel (skimage/data/), no download
    python data/make_images.py

Each photograph is scaled down (longest side 256 px, Lanczos) and saved as JPEG quality 90
(PNG for the two-tone horse silhouette); grayscale photographs stay grayscale. Licences and
authors: data/LICENSE.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
MAX_SIDE = 256
# our file name -> the file in skimage/data/ (every one CC0 or public domain: data/LICENSE)
SOURCES = {
    "astronaut.jpg": "astronaut.png",
    "camera.jpg": "camera.png",
    "chelsea.jpg": "chelsea.png",
    "coffee.jpg": "coffee.png",
    "rocket.jpg": "rocket.jpg",
    "hubble_deep_field.jpg": "hubble_deep_field.jpg",
    "clock_motion.jpg": "clock_motion.png",
    "retina.jpg": "retina.jpg",
    "brick.jpg": "brick.png",
    "grass.jpg": "grass.png",
    "gravel.jpg": "gravel.png",
    "text.jpg": "text.png",
    "horse.png": "horse.png",
}


def convert(source: Path, target: Path) -> None:
    with Image.open(source) as im:
        im.load()
        if im.mode == "RGBA":  # the horse: black on transparent -> black on white
            white = Image.new("RGB", im.size, (255, 255, 255))
            white.paste(im, mask=im.getchannel("A"))
            im = white
        elif im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        if target.suffix == ".png":
            im.save(target, format="PNG", optimize=True)
        else:
            im.save(target, format="JPEG", quality=90, optimize=True)


def main() -> None:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    for ours, theirs in SOURCES.items():
        convert(folder / theirs, out / ours)
        print(f"{out / ours}  <- skimage {skimage.__version__} data/{theirs}")


if __name__ == "__main__":
    main()
