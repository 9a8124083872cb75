"""Ground-truth renderer of toy scenes: crisp filled shapes on white, 32x32 RGB.

Where it sits: makes the images the toy model and its VQ tokenizer are pre-trained on, and the
reference images the detector is tested against. Deterministic and anti-aliasing free: a scene
maps to exactly one image, and every object pixel is exactly its palette colour.

    image = render(scene)                  # PIL.Image.Image, 32x32 RGB
    batch = render_batch([scene, ...])     # (B, 32, 32, 3) uint8

The eight 6x6 masks below were chosen so that every pair stays far apart (largest pairwise IoU
2/3: circle, triangle and heart vs square, arrow vs circle; the cross is an X rather than a
plus because a plus sits inside the circle, IoU 0.83; the arrow points right because an upward
one sits inside the circle, IoU 0.75), and every mask spans its full 6x6 box, so all objects
have the same box and GenEval's position rule sees the same geometry for every shape.
tests/test_toy_world.py checks both properties.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from gapray.toy.world import BACKGROUND, CELL, IMAGE_SIZE, MARGIN, PALETTE, SHAPE_SIZE, SHAPES, Scene


def _mask(rows: str) -> np.ndarray:
    return np.array([[ch == "X" for ch in row] for row in rows.split()], dtype=bool)


SHAPE_MASKS: dict[str, np.ndarray] = {
    # (6, 6) bool each; rows top to bottom. The circle is an octagon: at 6 px a rounder disc
    # would differ from the square by only its 4 corner pixels (IoU 0.89).
    "circle": _mask("..XX.. .XXXX. XXXXXX XXXXXX .XXXX. ..XX.."),
    "square": _mask("XXXXXX XXXXXX XXXXXX XXXXXX XXXXXX XXXXXX"),
    "triangle": _mask("..XX.. ..XX.. .XXXX. .XXXX. XXXXXX XXXXXX"),
    "cross": _mask("X....X XX..XX .XXXX. .XXXX. XX..XX X....X"),
    "ring": _mask(".XXXX. X....X X....X X....X X....X .XXXX."),
    "heart": _mask("XX..XX XXXXXX XXXXXX .XXXX. ..XX.. ..XX.."),
    "moon": _mask(".XXXXX XX.... X..... X..... XX.... .XXXXX"),
    "arrow": _mask("...X.. ....X. XXXXXX XXXXXX ....X. ...X.."),
}
assert set(SHAPE_MASKS) == set(SHAPES) and all(
    m.shape == (SHAPE_SIZE, SHAPE_SIZE) for m in SHAPE_MASKS.values()
)


def render_array(scene: Scene) -> np.ndarray:
    """(32, 32, 3) uint8 image of `scene`."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for obj in scene.objects:
        y0, x0 = obj.row * CELL + MARGIN, obj.col * CELL + MARGIN
        patch = img[y0 : y0 + SHAPE_SIZE, x0 : x0 + SHAPE_SIZE]  # (6, 6, 3) view into img
        patch[SHAPE_MASKS[obj.shape]] = PALETTE[obj.color]
    return img


def render(scene: Scene) -> Image.Image:
    """32x32 RGB PIL image of `scene`."""
    return Image.fromarray(render_array(scene))  # (H, W, 3) uint8 -> RGB


def render_batch(scenes: Sequence[Scene]) -> np.ndarray:
    """(B, 32, 32, 3) uint8 images of `scenes`, in order."""
    if not scenes:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return np.stack([render_array(s) for s in scenes])
