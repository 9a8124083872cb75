"""The toy world's vocabulary, prompts, scenes and near misses.

Where it sits: the toy run's prompt source (the curriculum draws from `make_splits`), the
ground truth for pre-training the toy model and its VQ tokenizer (`sample_scene` + `render`),
and the source of balanced yes/no understanding questions (`near_miss` prompts, `near_miss_scene`
scenes of the exact-scene kinds: an extra object, a count off by one, a swapped relation, ...). The spec is fixed,
because a model and a tokenizer are trained on it:

- 32x32 RGB, white background, a 4x4 grid of 8x8 cells, at most one object per cell, drawn
  centred in its cell on 6x6 pixels (1 px margin), so one cell is one token of an 8x VQ.
- shapes (GenEval "classes") circle, square, triangle, cross, ring, heart, moon, arrow; colours
  red, orange, yellow, green, blue, purple; counts 1-4; GenEval's relations left of / right of /
  above / below.

Prompts use GenEval's schema and templates (evaluation_metadata.jsonl) for all six tags:

    prompts = make_splits(seed=0)      # {"train": [...], "val": [...], "test": [...]}
    scene = sample_scene(prompts["train"][0], np.random.default_rng(0))
    negative = near_miss(prompts["train"][0], np.random.default_rng(1))   # one attribute changed
    clutter = near_miss_scene(prompts["train"][0], np.random.default_rng(2), "extra_object")
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations, product

import numpy as np

from gapray.eval.geneval import relative_position
from gapray.types import GENEVAL_TAGS, POSITIONS, ObjectSpec, Prompt

IMAGE_SIZE = 32
"""Image side in pixels."""
GRID = 4
"""Cells per side."""
CELL = IMAGE_SIZE // GRID
"""Cell side in pixels (8: one token of an 8x-downsampling VQ)."""
SHAPE_SIZE = 6
"""Side of an object's drawing box; the 1 px margin keeps neighbours from touching."""
MARGIN = (CELL - SHAPE_SIZE) // 2

SHAPES = ("circle", "square", "triangle", "cross", "ring", "heart", "moon", "arrow")
PLURALS = {s: s + "es" if s.endswith("s") else s + "s" for s in SHAPES}
COLORS = ("red", "orange", "yellow", "green", "blue", "purple")
BACKGROUND = (255, 255, 255)
# Saturated, far apart in RGB (closest pair orange/yellow at distance 112, every colour at least
# 255 from the white background), so that the nearest-palette rule survives VQ decoding noise.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 240, 0),
    "green": (0, 170, 0),
    "blue": (0, 64, 255),
    "purple": (150, 0, 200),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
COUNTS = (2, 3, 4)
"""Counts used by counting prompts (GenEval's range 2-4; exclude is N+1)."""
RELATIONS = POSITIONS


@dataclass(frozen=True)
class ToyObject:
    """One object: a shape of a palette colour in cell (row, col), row 0 at the top."""

    shape: str
    color: str
    row: int
    col: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in PALETTE:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {COLORS}")
        if not (0 <= self.row < GRID and 0 <= self.col < GRID):
            raise ValueError(f"cell ({self.row}, {self.col}) outside the {GRID}x{GRID} grid")

    @property
    def box(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 (exclusive) of the drawn pixels; every shape spans its full 6x6 box."""
        x0 = self.col * CELL + MARGIN
        y0 = self.row * CELL + MARGIN
        return (float(x0), float(y0), float(x0 + SHAPE_SIZE), float(y0 + SHAPE_SIZE))


@dataclass(frozen=True)
class Scene:
    """The objects of one image, at most one per cell (sorted in raster order by `sample_scene`)."""

    objects: tuple[ToyObject, ...] = ()

    def __post_init__(self) -> None:
        cells = [(o.row, o.col) for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")


# --- prompt text and schema -------------------------------------------------------------------

# A prompt's parameters: objects as (shape, colour or None, count), plus the relation of object 0
# to object 1 for position prompts. `_make` and `_params` convert to and from `Prompt`.
_Obj = tuple[str, str | None, int]


def _noun(shape: str, color: str | None = None) -> str:
    # GenEval's generator writes "an" before a vowel ("an orange cow", "an elephant").
    words = f"{color} {shape}" if color else shape
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _make(tag: str, objs: list[_Obj], relation: str | None = None, id: str = "") -> Prompt:
    if tag == "counting":
        shape, _, n = objs[0]
        text = f"a photo of {COUNT_WORDS[n]} {PLURALS[shape]}"
        return Prompt(id, text, tag, (ObjectSpec(shape, n),), (ObjectSpec(shape, n + 1),))
    if tag == "position":
        # GenEval: "a photo of A <rel> B" lists B first and puts the relation on A, pointing at B.
        (a, _, _), (b, _, _) = objs
        text = f"a photo of {_noun(a)} {relation} {_noun(b)}"
        return Prompt(id, text, tag, (ObjectSpec(b), ObjectSpec(a, position=(relation, 0))))
    text = "a photo of " + " and ".join(_noun(s, c) for s, c, _ in objs)
    return Prompt(id, text, tag, tuple(ObjectSpec(s, 1, c) for s, c, _ in objs))


def _params(prompt: Prompt) -> tuple[list[_Obj], str | None]:
    objs = [(o.cls, o.color, o.count) for o in prompt.include]
    if prompt.tag == "position":
        return [objs[1], objs[0]], prompt.include[1].position[0]
    return objs, None


def prompts_for_tag(tag: str) -> list[Prompt]:
    """Every distinct toy prompt of one GenEval tag, in a fixed order (ids empty)."""
    pairs = list(permutations(SHAPES, 2))  # GenEval's two-object prompts use two different classes
    if tag == "single_object":
        return [_make(tag, [(s, None, 1)]) for s in SHAPES]
    if tag == "two_object":
        return [_make(tag, [(a, None, 1), (b, None, 1)]) for a, b in pairs]
    if tag == "counting":
        return [_make(tag, [(s, None, n)]) for s, n in product(SHAPES, COUNTS)]
    if tag == "colors":
        return [_make(tag, [(s, c, 1)]) for c, s in product(COLORS, SHAPES)]
    if tag == "position":
        return [_make(tag, [(a, None, 1), (b, None, 1)], r) for (a, b), r in product(pairs, RELATIONS)]
    if tag == "color_attr":
        # GenEval's colour-attribution prompts never repeat a class or a colour.
        return [
            _make(tag, [(a, ca, 1), (b, cb, 1)])
            for (a, b), (ca, cb) in product(pairs, permutations(COLORS, 2))
        ]
    raise ValueError(f"unknown tag {tag!r}; expected one of {GENEVAL_TAGS}")


def all_prompts() -> dict[str, list[Prompt]]:
    """tag -> every distinct prompt (8, 56, 24, 48, 224 and 1,680 of them), ids empty."""
    return {tag: prompts_for_tag(tag) for tag in GENEVAL_TAGS}


SPLITS = ("train", "val", "test")
"""The toy prompt splits: train (the model and the run train on it), val (all tuning is scored
there), test (reported figures only)."""
EVAL_FRACTION = 0.2
"""Share of each tag's prompts in val and in test (each), before the bounds below."""
MIN_TEST_PROMPTS = 6
"""Fewest distinct prompts of each tag in the test split."""
MAX_EVAL_PROMPTS = 64
"""Most prompts of one tag in val or test (color_attr has 1,680), so an eval stays short."""


@dataclass(frozen=True)
class HeldApart:
    """Compositions that no train prompt has: (shape, colour) pairs and unordered shape pairs.
    Prompts that contain one go only to val and test, so those splits measure composition."""

    colour_shapes: frozenset[tuple[str, str]]
    shape_pairs: frozenset[frozenset[str]]

    def holds(self, prompt: Prompt) -> bool:
        """Whether `prompt` contains a held-apart composition."""
        shapes = {o.cls for o in prompt.include}
        return any((o.cls, o.color) in self.colour_shapes for o in prompt.include) or any(
            pair <= shapes for pair in self.shape_pairs
        )


@lru_cache(maxsize=8)
def held_apart(seed: int = 0) -> HeldApart:
    """The seed's held-apart compositions: one colour for each shape (each colour at most twice)
    and four disjoint shape pairs, drawn from a generator of `seed`."""
    rng = np.random.default_rng([seed, 1])
    colours = [COLORS[i % len(COLORS)] for i in rng.permutation(2 * len(COLORS))][: len(SHAPES)]
    order = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    pairs = [frozenset(order[k : k + 2]) for k in range(0, 8, 2)]  # the first 8 shapes of the shuffle
    return HeldApart(frozenset(zip(SHAPES, colours, strict=True)), frozenset(pairs))


def _split_sizes(n: int) -> tuple[int, int]:
    """(val, test) prompt counts of a tag with n prompts; train keeps at least one."""
    share = round(EVAL_FRACTION * n)
    n_test = min(MAX_EVAL_PROMPTS, max(MIN_TEST_PROMPTS, share), n - 2)
    n_val = min(MAX_EVAL_PROMPTS, max(1, share), n - n_test - 1)
    return n_val, n_test


@lru_cache(maxsize=8)
def _splits(seed: int) -> dict[str, tuple[Prompt, ...]]:
    rng = np.random.default_rng(seed)
    apart = held_apart(seed)
    picked: dict[str, list[list[Prompt]]] = {split: [] for split in SPLITS}  # per split, per tag
    for tag in GENEVAL_TAGS:
        prompts = prompts_for_tag(tag)
        order = [int(i) for i in rng.permutation(len(prompts))]
        held = [i for i in order if apart.holds(prompts[i])]
        free = [i for i in order if not apart.holds(prompts[i])]
        n_val, n_test = _split_sizes(len(prompts))
        chosen: dict[str, list[int]] = {}
        for split, size in (("test", n_test), ("val", n_val)):
            # Up to half of an eval split's prompts hold a held-apart composition.
            k = min(len(held), size // 2)
            chosen[split], held = held[:k] + free[: size - k], held[k:]
            free = free[size - k :]
        chosen["train"] = free  # held-apart prompts left over go nowhere
        for split in SPLITS:
            picked[split].append([prompts[i] for i in sorted(chosen[split])])
    out: dict[str, tuple[Prompt, ...]] = {}
    for split, per_tag in picked.items():
        # Round-robin over the tags, so the first prompts of a split (--limit) span every tag.
        order = [ps[k] for k in range(max(map(len, per_tag))) for ps in per_tag if k < len(ps)]
        out[split] = tuple(
            Prompt(f"toy-{split}/{n:05d}", p.text, p.tag, p.include, p.exclude) for n, p in enumerate(order)
        )
    return out


def make_splits(seed: int = 0) -> dict[str, list[Prompt]]:
    """Seeded train/val/test split of the toy prompts, per tag, so each split covers all six tags.

    No prompt text is in two splits. Each tag puts round(EVAL_FRACTION x its size) prompts in val
    and in test, at most MAX_EVAL_PROMPTS, test at least MIN_TEST_PROMPTS, train at least one.
    Prompts with a held-apart composition (`held_apart(seed)`) fill up to half of val and of
    test and are never in train. Prompts come round-robin over the tags (one of each tag in
    GENEVAL_TAGS order, again, ... while a tag has any left), so the first six of a split are
    one of each tag; ids "toy-train/00000", "toy-val/00000", "toy-test/00000", ... number them
    in that order. Fresh lists of shared (frozen) prompts on each call.
    """
    return {split: list(prompts) for split, prompts in _splits(seed).items()}


CAPTION_OBJECTS = (3, 4)
"""Objects in a generation caption (`colour_caption`): more than any GenEval prompt of the toy world
has, so no caption text is a prompt of any split."""


def colour_caption(rng: np.random.Generator, seed: int = 0) -> Prompt:
    """A generation caption beyond GenEval's templates: 3 or 4 objects of distinct shapes and distinct
    colours in the colour-attribution form ("a photo of a red circle and a blue moon and a green
    ring"), tag color_attr, id "caption". It holds no composition that `held_apart(seed)` keeps out
    of training (no held-apart (shape, colour) and no held-apart shape pair), and with its 3-4
    objects no text of any split. Pure given the generator.

    Why: a pretraining generator that only sees the train split's prompts learns each text by
    heart (train colors prompts pass, unseen ones draw the shape in a colour it was trained with,
    docs/toy_recipe_notebook.md P1); many distinct captions make it bind each colour word to its
    shape word instead.
    """
    apart = held_apart(seed)
    for _ in range(1000):
        k = int(rng.choice(CAPTION_OBJECTS))
        shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=k, replace=False)]
        colours = [COLORS[i] for i in rng.choice(len(COLORS), size=k, replace=False)]
        prompt = _make("color_attr", [(s, c, 1) for s, c in zip(shapes, colours, strict=True)], id="caption")
        if not apart.holds(prompt):
            return prompt
    raise RuntimeError(f"no caption without a held-apart composition in 1000 draws (seed {seed})")


# --- scenes -----------------------------------------------------------------------------------


def _cell_box(cell: int) -> tuple[float, float, float, float]:
    return ToyObject(SHAPES[0], COLORS[0], cell // GRID, cell % GRID).box


def sample_scene(prompt: Prompt, rng: np.random.Generator, max_tries: int = 1000) -> Scene:
    """A random scene that satisfies `prompt` under GenEval's rules, with only its objects.

    Each include entry gets exactly `count` objects (so counting's exclude N+1 holds), in its
    colour or a random one, in random distinct cells. For position entries the cells are redrawn
    until the stated relation is the *only* one GenEval's rule finds (no diagonal that also reads
    as above/below), so every other relation is a sure near miss.
    """
    placed: list[tuple[int, str, str]] = []  # (include index, shape, colour)
    for i, spec in enumerate(prompt.include):
        if spec.cls not in SHAPES:
            raise ValueError(f"prompt {prompt.id!r}: class {spec.cls!r} is not a toy shape")
        for _ in range(spec.count):
            color = spec.color or COLORS[rng.integers(len(COLORS))]
            placed.append((i, spec.cls, color))
    for spec in prompt.exclude:
        if sum(s == spec.cls for _, s, _ in placed) >= spec.count:
            raise ValueError(f"prompt {prompt.id!r}: include and exclude of {spec.cls!r} contradict")
    if len(placed) > GRID * GRID:
        raise ValueError(f"prompt {prompt.id!r} needs {len(placed)} objects, more than {GRID * GRID} cells")
    for _ in range(max_tries):
        cells = rng.choice(GRID * GRID, size=len(placed), replace=False)
        if _positions_hold(prompt, placed, cells):
            objects = [
                ToyObject(s, c, int(cell) // GRID, int(cell) % GRID)
                for (_, s, c), cell in zip(placed, cells, strict=True)
            ]
            return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))))
    raise ValueError(f"prompt {prompt.id!r}: no layout found in {max_tries} tries")


def _positions_hold(prompt: Prompt, placed: list[tuple[int, str, str]], cells: np.ndarray) -> bool:
    for i, spec in enumerate(prompt.include):
        if spec.position is None:
            continue
        rel, target = spec.position
        mine = [cells[k] for k, (j, _, _) in enumerate(placed) if j == i]
        theirs = [cells[k] for k, (j, _, _) in enumerate(placed) if j == target]
        for a, b in product(mine, theirs):
            if relative_position(_cell_box(a), _cell_box(b)) != {rel}:
                return False
    return True


def near_miss(prompt: Prompt, rng: np.random.Generator, change: str | None = None) -> Prompt:
    """A prompt of the same tag with exactly one attribute changed; a scene of `prompt` fails it.

    The kind of change is drawn uniformly from those the tag has (shape; colour for colors and
    color_attr; count for counting; relation for position), then the new value uniformly; with
    `change` ("shape", "color", "count" or "relation") only that kind is drawn (an error when
    the tag has none). A new
    shape or colour is one the prompt does not already use, so two-object prompts keep two
    different classes (as GenEval's do) and the original scene cannot satisfy the changed entry.
    The id is the original's with "/near-miss" appended.
    """
    objs, relation = _params(prompt)
    shapes = {s for s, _, _ in objs}
    colors = {c for _, c, _ in objs if c is not None}
    options: dict[str, list[tuple[list[_Obj], str | None]]] = {
        "shape": [],
        "color": [],
        "count": [],
        "relation": [],
    }
    for k, (s, c, n) in enumerate(objs):
        for new in SHAPES:
            if new not in shapes:
                options["shape"].append(([*objs[:k], (new, c, n), *objs[k + 1 :]], relation))
        if c is not None:
            for new in COLORS:
                if new not in colors:
                    options["color"].append(([*objs[:k], (s, new, n), *objs[k + 1 :]], relation))
    if prompt.tag == "counting":
        (s, c, n) = objs[0]
        options["count"] = [([(s, c, m)], None) for m in COUNTS if m != n]
    if prompt.tag == "position":
        options["relation"] = [(objs, r) for r in RELATIONS if r != relation]
    kinds = [k for k, v in options.items() if v]
    if prompt.tag not in GENEVAL_TAGS or not kinds:
        raise ValueError(f"prompt {prompt.id!r}: no near miss for tag {prompt.tag!r}")
    if change is None:
        choices = options[kinds[rng.integers(len(kinds))]]
    elif change not in options:
        raise ValueError(f"near_miss change must be one of {sorted(options)} or None, got {change!r}")
    elif not options[change]:
        raise ValueError(f"prompt {prompt.id!r} (tag {prompt.tag!r}) has no {change!r} near miss")
    else:
        choices = options[change]
    new_objs, new_rel = choices[rng.integers(len(choices))]
    return _make(prompt.tag, new_objs, new_rel, id=f"{prompt.id}/near-miss")


# --- near-miss scenes (exact-scene negatives) ---------------------------------------------------

NEAR_MISS_KINDS = ("extra_object", "count_off_by_one", "swapped_relation", "wrong_colour", "wrong_shape")
"""Kinds of near-miss scene: each is the exact scene of a prompt with one thing wrong, so the
exact-scene rule (gapray.eval.exact_scene) rejects it while a presence-only check may not."""


def near_miss_kinds(prompt: Prompt) -> tuple[str, ...]:
    """The near-miss scene kinds that make sense for `prompt`'s tag (NEAR_MISS_KINDS order):
    extra_object and count_off_by_one for every tag, swapped_relation for position prompts,
    wrong_colour for prompts that ask a colour, wrong_shape for every tag."""
    if prompt.tag not in GENEVAL_TAGS:
        raise ValueError(f"prompt {prompt.id!r}: unknown tag {prompt.tag!r}; expected one of {GENEVAL_TAGS}")
    kinds = ["extra_object", "count_off_by_one"]
    if prompt.tag == "position":
        kinds.append("swapped_relation")
    if any(o.color for o in prompt.include):
        kinds.append("wrong_colour")
    kinds.append("wrong_shape")
    return tuple(kinds)


def _free_cells(scene: Scene) -> list[int]:
    used = {(o.row, o.col) for o in scene.objects}
    return [c for c in range(GRID * GRID) if (c // GRID, c % GRID) not in used]


def _with(scene: Scene, objects: list[ToyObject]) -> Scene:
    return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))))


def near_miss_scene(prompt: Prompt, rng: np.random.Generator, kind: str) -> Scene:
    """A scene that is `prompt`'s exact scene with one thing wrong, of the given kind:

    - extra_object: the exact scene plus one object of any shape and colour in a free cell;
    - count_off_by_one: counting prompts get N-1 or N+1 of the class (N-1 only when N+1 would
      not fit); other tags get one asked object duplicated (same shape and colour, a free cell)
      or one removed (even odds);
    - swapped_relation: position prompts only; the two objects' cells swapped, so the relation
      reads reversed (sample_scene makes the asked relation the only one that holds);
    - wrong_colour: prompts that ask a colour; the exact scene of a near miss with one colour
      changed (`near_miss(change="color")`);
    - wrong_shape: the exact scene of a near miss with one shape changed.

    Pure given the generator. An error names the kind when it is unknown or does not apply to
    the prompt (`near_miss_kinds`).
    """
    if kind not in NEAR_MISS_KINDS:
        raise ValueError(f"near-miss kind must be one of {NEAR_MISS_KINDS}, got {kind!r}")
    if kind not in near_miss_kinds(prompt):
        raise ValueError(f"prompt {prompt.id!r} (tag {prompt.tag!r}) has no {kind!r} near miss")
    if kind == "wrong_colour":
        return sample_scene(near_miss(prompt, rng, change="color"), rng)
    if kind == "wrong_shape":
        return sample_scene(near_miss(prompt, rng, change="shape"), rng)
    if kind == "count_off_by_one" and prompt.tag == "counting":
        spec = prompt.include[0]
        n = spec.count
        m = n - 1 if n + 1 > GRID * GRID or rng.random() < 0.5 else n + 1
        return sample_scene(Prompt(prompt.id, prompt.text, prompt.tag, (ObjectSpec(spec.cls, m),)), rng)
    scene = sample_scene(prompt, rng)
    objects = list(scene.objects)
    if kind == "swapped_relation":
        a, b = objects
        return _with(
            scene, [ToyObject(a.shape, a.color, b.row, b.col), ToyObject(b.shape, b.color, a.row, a.col)]
        )
    free = _free_cells(scene)
    if kind == "count_off_by_one" and rng.random() < 0.5:
        # One asked object missing.
        del objects[int(rng.integers(len(objects)))]
        return _with(scene, objects)
    cell = int(free[rng.integers(len(free))])
    if kind == "count_off_by_one":
        # One asked object duplicated.
        src = objects[int(rng.integers(len(objects)))]
        shape, color = src.shape, src.color
    else:
        shape, color = SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))]
    return _with(scene, [*objects, ToyObject(shape, color, cell // GRID, cell % GRID)])
