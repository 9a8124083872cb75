"""The toy world's verifier: an exact, rule-based detector of shapes in 32x32 images.

Where it sits: in the toy run it plays GenEval's Mask2Former + CLIP. Its detections go to the
GenEval rule engine, so generated images are scored with GenEval's own rules:

    detector = ToyDetector()
    correct, reasons = evaluate_image(prompt, detector.detect(image))   # gapray.eval.geneval

On rendered images it is exact (class, colour, and the box of the object's pixels). On images
decoded from generated VQ tokens, which are noisy, it works cell by cell (the world puts at most
one object, centred, in each 8x8 cell):

1. foreground pixel: one whose nearest colour among white and the six palette colours is not
   white. The boundary lies halfway between white and each colour, i.e. at least 127 RGB units
   from either for every colour (yellow is the closest to white, at 255), so Gaussian pixel noise
   of sigma 20 practically never flips a pixel (that needs a > 6 sigma deviation).
2. foreground pixels with no foreground 8-neighbour in their cell are dropped as speckle (no
   shape has an isolated pixel), so a stray decoded pixel does not stretch the box.
3. empty vs object: at least `min_pixels` (8) foreground pixels. The smallest shapes (ring, moon,
   arrow) have 16; below 8 a blob cannot reach IoU 0.5 with any shape, so it is speckle, not an object.
4. colour: the palette colour nearest to the mean foreground pixel (averaging ~20-36 pixels
   cuts noise about 5x, and the closest palette pair, orange/yellow, is 112 apart).
5. shape: the best IoU between the cell's foreground and the eight 6x6 masks, each tried at the
   nine placements within the 8x8 cell (a decoded object may sit off-centre by a pixel). At or
   above `min_iou` (0.7) it is that shape; below, class "unknown" (score 1.0), which no prompt
   names, so a non-shape blob never counts. 0.7 sits above the largest IoU between two different
   masks (0.67), so a drawing halfway between two shapes is not credited as either, while a
   true shape with a couple of flipped pixels keeps an IoU around 0.85.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from gapray.eval.geneval import Detection
from gapray.toy.render import SHAPE_MASKS
from gapray.toy.world import BACKGROUND, CELL, COLORS, GRID, IMAGE_SIZE, PALETTE, SHAPE_SIZE, SHAPES, Scene

UNKNOWN = "unknown"
"""Class of a foreground blob that matches no shape."""
MIN_PIXELS = 8
"""Fewest foreground pixels (after speckle removal) for a cell to hold an object."""
MIN_IOU = 0.7
"""Least IoU with the best shape mask for the blob to be that shape, else "unknown"."""

# (7, 3): white first, then the palette in COLORS order; index 0 = background.
_REFERENCE = np.array([BACKGROUND] + [PALETTE[c] for c in COLORS], dtype=np.float32)


def _templates() -> np.ndarray:
    """(n_shapes, n_placements, 8, 8) bool: each mask at every offset that fits in a cell."""
    n_off = CELL - SHAPE_SIZE + 1
    out = np.zeros((len(SHAPES), n_off * n_off, CELL, CELL), dtype=bool)
    for s, shape in enumerate(SHAPES):
        for k, (dy, dx) in enumerate(np.ndindex(n_off, n_off)):
            out[s, k, dy : dy + SHAPE_SIZE, dx : dx + SHAPE_SIZE] = SHAPE_MASKS[shape]
    return out


_TEMPLATES = _templates()


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image, got shape {arr.shape}")
    return arr


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose nearest reference colour (white + palette) is not white."""
    pix = image.astype(np.float32)[..., None, :]  # (H, W, 1, 3)
    dist = ((pix - _REFERENCE) ** 2).sum(-1)  # (H, W, 7)
    return dist.argmin(-1) != 0


def _drop_speckle(mask: np.ndarray) -> np.ndarray:
    """Remove pixels without a foreground 8-neighbour; mask is one (8, 8) cell."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    neighbours = sum(
        padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].astype(np.int32)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
    )
    return mask & (neighbours > 0)


class ToyDetector:
    """Per-cell rule-based detector; see the module docstring for the rules and thresholds."""

    def __init__(self, min_pixels: int = MIN_PIXELS, min_iou: float = MIN_IOU) -> None:
        self.min_pixels = min_pixels
        self.min_iou = min_iou

    def detect(self, image: Image.Image | np.ndarray) -> list[Detection]:
        """Detections in raster order of cells; `image` is a PIL image or (32, 32, 3) uint8."""
        arr = _as_array(image)
        fg = foreground_mask(arr)  # (32, 32)
        out = []
        for row, col in np.ndindex(GRID, GRID):
            y0, x0 = row * CELL, col * CELL
            mask = _drop_speckle(fg[y0 : y0 + CELL, x0 : x0 + CELL])  # (8, 8)
            if mask.sum() < self.min_pixels:
                continue
            mean = arr[y0 : y0 + CELL, x0 : x0 + CELL][mask].astype(np.float32).mean(0)  # (3,)
            color = COLORS[int(((_REFERENCE[1:] - mean) ** 2).sum(-1).argmin())]
            inter = (_TEMPLATES & mask).sum((-2, -1))  # (n_shapes, n_placements)
            union = (_TEMPLATES | mask).sum((-2, -1))
            iou = (inter / union).max(-1)  # (n_shapes,)
            best = int(iou.argmax())
            cls = SHAPES[best] if iou[best] >= self.min_iou else UNKNOWN
            ys, xs = np.nonzero(mask)
            box = (
                float(x0 + xs.min()),
                float(y0 + ys.min()),
                float(x0 + xs.max() + 1),
                float(y0 + ys.max() + 1),
            )
            out.append(Detection(cls=cls, box=box, score=1.0, color=color))
        return out

    def detect_batch(self, images: np.ndarray | Sequence[Image.Image | np.ndarray]) -> list[list[Detection]]:
        """Detections for each image of a (B, 32, 32, 3) uint8 array or a list of images."""
        return [self.detect(im) for im in images]


def scene_detections(scene: Scene) -> list[Detection]:
    """What the detector finds on `render(scene)`, computed from the scene alone (raster order)."""
    objects = sorted(scene.objects, key=lambda o: (o.row, o.col))
    return [Detection(cls=o.shape, box=o.box, score=1.0, color=o.color) for o in objects]
