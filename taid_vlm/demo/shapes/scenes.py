"""Synthetic 2-D scenes: sampling, rendering and a text description of the same scene.

Objects sit on a grid in distinct rows and columns, so every left/right/above/below relation
between two objects is decided by the grid and is equally clear in the image and in the text
version. Scenes are plain dicts (JSON-ready) so they can travel in each record's ``meta``.
"""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (150, 60, 190),
    "orange": (245, 135, 20),
}
SIZES = ("small", "large")
BACKGROUND = (255, 255, 255)
# Bounding radius per size, as a fraction of a grid cell.
_RADIUS = {"small": 0.5, "large": 0.8}
_JITTER = 0.15  # random offset of a centre, as a fraction of a cell
_SUPERSAMPLE = 4

Scene = dict[str, Any]


def sample_scene(rng: random.Random, image_size: int = 64, grid: int = 8,
                 min_objects: int = 2, max_objects: int = 6) -> Scene:
    """A scene of ``min..max`` non-overlapping objects in distinct grid rows and columns."""
    if not 1 <= min_objects <= max_objects <= grid:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= grid, got {min_objects}, {max_objects}, {grid}")
    n = rng.randint(min_objects, max_objects)
    cell = image_size / grid
    jitter = _JITTER * cell
    margin = max(_RADIUS.values()) * cell + jitter  # every object stays fully inside the image
    pitch = (image_size - 2 * margin) / max(grid - 1, 1)
    for _ in range(1000):
        cols, rows = rng.sample(range(grid), n), rng.sample(range(grid), n)
        objects = []
        for col, row in zip(cols, rows):
            size = rng.choice(SIZES)
            jitter_x, jitter_y = (rng.uniform(-jitter, jitter) for _ in range(2))
            objects.append({
                "shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)), "size": size,
                "col": col, "row": row,
                "x": round(margin + col * pitch + jitter_x, 2), "y": round(margin + row * pitch + jitter_y, 2),
                "r": round(_RADIUS[size] * cell, 2),
            })
        if not _overlaps(objects, gap=0.1 * cell):
            return {"image_size": image_size, "grid": grid, "objects": objects}
    raise RuntimeError(f"could not place {n} objects on a {grid}x{grid} grid; use a larger grid")


def _overlaps(objects: list[dict], gap: float) -> bool:
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            if (a["x"] - b["x"]) ** 2 + (a["y"] - b["y"]) ** 2 < (a["r"] + b["r"] + gap) ** 2:
                return True
    return False


def scene_key(scene: Scene) -> tuple:
    """Identity of a scene up to jitter, to keep test scenes out of the training set."""
    return tuple(sorted((o["shape"], o["color"], o["size"], o["col"], o["row"]) for o in scene["objects"]))


def render_scene(scene: Scene) -> Image.Image:
    """Draw at 4x and downsample: smooth edges, and identical bytes for identical scenes."""
    size, k = scene["image_size"], _SUPERSAMPLE
    canvas = Image.new("RGB", (size * k, size * k), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for o in scene["objects"]:
        x, y, r, fill = o["x"] * k, o["y"] * k, o["r"] * k, COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse((x - 0.9 * r, y - 0.9 * r, x + 0.9 * r, y + 0.9 * r), fill=fill)
        else:
            draw.polygon(_outline(o["shape"], x, y, r), fill=fill)
    return canvas.resize((size, size), Image.Resampling.BOX)


def _outline(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = 0.7 * r  # corners stay inside the bounding circle
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":  # equilateral, pointing up, centroid at the centre
        return [(x, y - r), (x + 0.866 * r, y + 0.5 * r), (x - 0.866 * r, y + 0.5 * r)]
    if shape == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def describe_scene(scene: Scene, rng: random.Random) -> str:
    """The text-mode stand-in for the image: every object with its grid column and row.

    Objects are listed in random order, so spatial questions need the coordinates rather than
    the listing order. Row 0 is the top, column 0 the left.
    """
    objects = list(scene["objects"])
    rng.shuffle(objects)
    items = [f"a {o['size']} {o['color']} {o['shape']} at column {o['col']}, row {o['row']}" for o in objects]
    return "Scene: " + "; ".join(items) + "."
