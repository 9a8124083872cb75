"""Config errors from hydra and OmegaConf, re-raised as `ConfigError`s naming the key.

Where it sits: beside `gapray.config` (which calls these when composing or merging fails) and
`gapray.config_checks` (ranges and combinations). Kept apart so each file reads in one sitting.

    raise translate(err, overrides)          # "learner.lr: expected float, got 'fast'"
    suggest("run.stepz")                     # "; did you mean 'run.steps'?"
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from typing import Any, get_type_hints

from gapray.config import SECTIONS, ConfigError, all_keys


def _causes(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def suggest(key: str) -> str:
    """The hint "; did you mean 'run.steps'?" for a near miss of a known key, else ""."""
    section, _, leaf = key.rpartition(".")
    known = all_keys()
    leaves = {k: k.rsplit(".", 1)[1] for k in known}

    def near(word: str, pool: list[str], cutoff: float) -> str | None:
        hit = difflib.get_close_matches(word, pool, n=1, cutoff=cutoff)
        return hit[0] if hit else None

    # 1. a typo within the right section; 2. the right field under a wrong or missing section;
    # 3. anything close.
    same = [v for k, v in leaves.items() if k.startswith(section + ".")]
    best = near(leaf, same, 0.75)
    if best is not None:
        return f"; did you mean '{section}.{best}'?"
    best = leaf if leaf in leaves.values() else near(leaf, sorted(set(leaves.values())), 0.75)
    if best is not None:
        return f"; did you mean '{next(k for k, v in leaves.items() if v == best)}'?"
    best = near(key, known + list(SECTIONS), 0.6)
    return f"; did you mean '{best}'?" if best else ""


def _expected_type(key: str) -> str:
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    if cls is None:
        return "?"
    hint = get_type_hints(cls).get(name)
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def translate(e: BaseException, overrides: Sequence[str]) -> ConfigError:
    text = "\n".join(str(c) for c in _causes(e))
    m = re.search(r"Error parsing override '([^']*)'", text)
    if m:
        return ConfigError(f"override {m.group(1)!r}: cannot parse, expected key=value or group=option")
    key = None
    for c in _causes(e):
        if getattr(c, "full_key", None):
            key = c.full_key
            break
    if key is None:
        m = re.search(r"full_key: (\S+)", text) or re.search(r"override '([^']+)'", text)
        key = m.group(1) if m else None
    if key is None:
        return ConfigError(f"invalid config or override {list(overrides)}: {text.splitlines()[0]}")
    if key not in all_keys() and key not in SECTIONS:
        return ConfigError(f"unknown key '{key}'{suggest(key)}", [key])
    value = _override_value(key, overrides)
    got = f"got {value!r}" if value is not None else text.splitlines()[0]
    return ConfigError(f"{key}: expected {_expected_type(key)}, {got}", [key])


def _override_value(key: str, overrides: Sequence[str]) -> str | None:
    for item in overrides:
        k, sep, v = item.lstrip("+~").partition("=")
        if sep and k == key:
            return v
    return None


def missing_option_error(e: Any) -> ConfigError:
    m = re.search(r"'([^'/]+)/([^']+)'", str(e))
    if m:
        group, option = m.groups()
        options = ", ".join(getattr(e, "options", None) or [])
        return ConfigError(f"{group}: unknown option '{option}'; choose from {options}", [group])
    return ConfigError(str(e).splitlines()[0])
