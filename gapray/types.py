"""Small frozen records that cross module (and later actor) boundaries.

A `Prompt` is one text-to-image request in GenEval's own schema: a tag (task), the prompt text,
`include` requirements (class, count, optional colour, optional relative position to another
include entry) and `exclude` requirements (fail the image if `count` or more of `class` are
found). Prompt sets from GenEval, T2I-CompBench and the toy world all load into this type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
POSITIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class ObjectSpec:
    """One GenEval include/exclude entry."""

    cls: str
    """Object class name (GenEval's `class`)."""
    count: int = 1
    """At least this many (include) / fail at this many or more (exclude)."""
    color: str | None = None
    """Required colour of the top-`count` objects, or None."""
    position: tuple[str, int] | None = None
    """(relation, index of the include entry it is relative to), e.g. ("left of", 1)."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class": self.cls, "count": self.count}
        if self.color is not None:
            d["color"] = self.color
        if self.position is not None:
            d["position"] = [self.position[0], self.position[1]]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> ObjectSpec:
        if not isinstance(d, dict):
            raise ValueError(f"expected an object entry, got {type(d).__name__}")
        if "class" not in d or not isinstance(d["class"], str):
            raise ValueError("entry needs a string field 'class'")
        count = d.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"field 'count' must be an integer >= 1, got {count!r}")
        color = d.get("color")
        if color is not None and not isinstance(color, str):
            raise ValueError(f"field 'color' must be a string, got {color!r}")
        pos = d.get("position")
        position = None
        if pos is not None:
            if (
                not isinstance(pos, (list, tuple))
                or len(pos) != 2
                or pos[0] not in POSITIONS
                or not isinstance(pos[1], int)
            ):
                raise ValueError(
                    f"field 'position' must be [relation, index] with relation in {POSITIONS}, got {pos!r}"
                )
            position = (pos[0], pos[1])
        return ObjectSpec(cls=d["class"], count=count, color=color, position=position)


@dataclass(frozen=True)
class Prompt:
    """One prompt; `include`/`exclude` are empty for free-text sets (T2I-CompBench, DPG)."""

    id: str
    """Stable id, unique within its prompt set (e.g. "geneval/00017", "toy-train/00003")."""
    text: str
    tag: str | None = None
    """GenEval task tag, or the T2I-CompBench category, or None."""
    include: tuple[ObjectSpec, ...] = field(default_factory=tuple)
    exclude: tuple[ObjectSpec, ...] = field(default_factory=tuple)

    def to_geneval(self) -> dict[str, Any]:
        """The record as a line of GenEval's evaluation_metadata.jsonl."""
        d: dict[str, Any] = {"tag": self.tag, "include": [o.to_json() for o in self.include]}
        if self.exclude:
            d["exclude"] = [o.to_json() for o in self.exclude]
        d["prompt"] = self.text
        return d

    @staticmethod
    def from_geneval(d: dict[str, Any], id: str) -> Prompt:
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        text = d.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("field 'prompt' must be a non-empty string")
        tag = d.get("tag")
        if tag is not None and not isinstance(tag, str):
            raise ValueError(f"field 'tag' must be a string, got {tag!r}")
        out = []
        for key in ("include", "exclude"):
            entries = d.get(key, [])
            if not isinstance(entries, list):
                raise ValueError(f"field '{key}' must be a list")
            specs = []
            for i, e in enumerate(entries):
                try:
                    specs.append(ObjectSpec.from_json(e))
                except ValueError as err:
                    raise ValueError(f"field '{key}[{i}]': {err}") from None
            out.append(tuple(specs))
        include, exclude = out
        for i, spec in enumerate(include):
            if spec.position is not None and not 0 <= spec.position[1] < len(include):
                raise ValueError(
                    f"field 'include[{i}].position' refers to entry {spec.position[1]}, which does not exist"
                )
        return Prompt(id=id, text=text, tag=tag, include=include, exclude=exclude)
