"""What a sweep runs: its axes, the overrides every trial shares, and Tune's settings (pure).

Where it sits: the first thing `gapray sweep` does. The command line is hydra's multirun
syntax: `key=a,b,c` is a grid axis, a single value a fixed override for every trial;
`key=range(0,3)` a grid of integers; `key=choice(a,b)` a random choice, `key=interval(lo,hi)` a
uniform draw and `key=tag(log,interval(lo,hi))` a log-uniform one (each of num_samples trials
draws anew). `sweep=FILE.yaml` reads the same from a file, `sweep.<option>=value` sets an
option, `resume=DIR` continues a sweep.

    spec = parse_args(["learner.beta=0.05,0.1", "run.seed=0,1", "model=tiny", "sweep.max_failures=2"])
    spec.axes            # [Axis("learner.beta", "grid", [0.05, 0.1]), Axis("run.seed", "grid", [0, 1])]
    spec.overrides       # ["model=tiny"]
    grid_points(spec)    # [{"learner.beta": 0.05, "run.seed": 0}, ...]: 4 points

A sweep YAML:

    name: beta-seeds
    overrides: [model=tiny, run.steps=3]
    axes:
      learner.beta: [0.05, 0.1]          # a list: a grid axis
      run.seed: "0,1"                    # or the command line's syntax
    max_failures: 1

Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gapray.config import ConfigError

GRID, CHOICE, UNIFORM, LOGUNIFORM = "grid", "choice", "uniform", "loguniform"
RANDOM_KINDS = (CHOICE, UNIFORM, LOGUNIFORM)
# run keys the sweep sets for every trial itself
OWNED_KEYS = ("run.out_dir", "run.resume", "run.ray_address", "run.progress", "resume")
N_KEY = "generation.images_per_prompt"
PAIRS_KEY = "pairs.pairs_per_prompt"


@dataclass(frozen=True)
class Axis:
    """One swept key: a grid of values, a random choice among them, or a (log-)uniform range
    (values = [low, high])."""

    key: str
    kind: str
    values: list


@dataclass
class SweepSpec:
    """A sweep; the fields below (but axes and overrides) are the `sweep.<option>` keys."""

    axes: list[Axis] = field(default_factory=list)
    """The swept keys, in order (the table's first columns)."""
    overrides: list[str] = field(default_factory=list)
    """Overrides every trial shares (hydra syntax, as for `gapray run`)."""
    name: str = "sweep"
    """The sweep's name (Tune's experiment, the W&B group, the MLflow experiment)."""
    out_dir: str = "runs/sweep-{timestamp}"
    """The sweep directory: each trial's run directory under runs/, Tune's state under tune/,
    the results table, plots and index.html; "{timestamp}" becomes YYYYmmdd-HHMMSS."""
    num_samples: int = 1
    """Tune's num_samples: each grid point is run this many times, random axes drawn anew each
    time (> 1 only with a random axis: a grid point run twice is the same run)."""
    max_failures: int = 1
    """A failed trial is retried this many times (Tune's FailureConfig.max_failures); a retry
    continues the trial's run from its last checkpoint."""
    max_concurrent: int = 0
    """Trials at once; 0 = as many as the cluster holds (each trial reserves its roles)."""
    pairs_follow_n: bool = False
    """With generation.images_per_prompt (N) swept: False keeps pairs.pairs_per_prompt as
    configured (1 by default), so every trial trains on at most the same number of pairs per step
    and a larger N only makes pairs more extreme; True sets pairs.pairs_per_prompt = N // 2 per
    trial, so more samples also mean more training pairs."""
    seed_key: str = "run.seed"
    """The axis the table averages over (mean and bootstrap 95% interval per other point)."""
    bootstrap: int = 2000
    """Bootstrap resamples for the table's 95% intervals."""
    ray_address: str | None = None
    """None: RAY_ADDRESS (as under `ray job submit`) or a local Ray; else the cluster's address."""


OPTION_KEYS = tuple(f.name for f in dataclasses.fields(SweepSpec) if f.name not in ("axes", "overrides"))


def parse_args(argv: list[str]) -> SweepSpec:
    """The command line (see the module docstring) -> a checked SweepSpec. `resume=` is the
    caller's (gapray.sweep.runner.main)."""
    spec = SweepSpec()
    rest = []
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"sweep argument {item!r}: expected key=value", [item])
        if key == "sweep":
            spec = load_yaml(value, base=spec)
        else:
            rest.append((key, value))
    for key, value in rest:
        if key.startswith("sweep."):
            _set_option(spec, key.removeprefix("sweep."), value)
            continue
        axis = parse_axis(key, value)
        if axis is None:
            spec.overrides.append(f"{key}={value}")
        else:
            spec.axes = [a for a in spec.axes if a.key != key] + [axis]
    check(spec)
    return spec


def load_yaml(path: str | Path, base: SweepSpec | None = None) -> SweepSpec:
    """A sweep YAML (see the module docstring) on top of `base`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep: {p} does not exist", ["sweep"])
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"sweep {p}: expected a mapping of sweep options", ["sweep"])
    spec = base or SweepSpec()
    for key, value in data.items():
        if key == "axes":
            if not isinstance(value, dict):
                raise ConfigError(f"sweep {p}: axes must map keys to values", ["axes"])
            for k, v in value.items():
                axis = Axis(k, GRID, list(v)) if isinstance(v, list) else parse_axis(k, str(v))
                if axis is None:
                    axis = Axis(k, GRID, [_value(str(v))])
                spec.axes = [a for a in spec.axes if a.key != k] + [axis]
        elif key == "overrides":
            if not isinstance(value, list):
                raise ConfigError(f"sweep {p}: overrides must be a list of key=value", ["overrides"])
            spec.overrides += [str(o) for o in value]
        else:
            _set_option(spec, key, value, from_yaml=True)
    return spec


def parse_axis(key: str, text: str) -> Axis | None:
    """`a,b,c` / range(...) / choice(...) / interval(...) / tag(log,interval(...)) -> an Axis;
    a single value (also a [list] or a quoted string) -> None (a fixed override)."""
    t = text.strip()
    m = re.fullmatch(r"tag\(\s*log\s*,\s*interval\((.*)\)\s*\)", t)
    if m:
        return Axis(key, LOGUNIFORM, _bounds(key, m.group(1), log=True))
    m = re.fullmatch(r"interval\((.*)\)", t)
    if m:
        return Axis(key, UNIFORM, _bounds(key, m.group(1)))
    m = re.fullmatch(r"choice\((.*)\)", t)
    if m:
        return Axis(key, CHOICE, [_value(v) for v in split_top(m.group(1))])
    m = re.fullmatch(r"range\((.*)\)", t)
    if m:
        args = [_value(v) for v in split_top(m.group(1))]
        if not (1 <= len(args) <= 3 and all(isinstance(a, int) for a in args)):
            raise ConfigError(f"{key}={text}: range takes 1 to 3 integers (stop | start,stop[,step])", [key])
        return Axis(key, GRID, list(range(*args)))
    parts = split_top(t)
    if len(parts) < 2:
        return None
    return Axis(key, GRID, [_value(v) for v in parts])


def split_top(text: str) -> list[str]:
    """Split at commas outside brackets, parentheses and quotes ("[a,b],c" -> ["[a,b]", "c"])."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    parts.append(cur.strip())
    return parts


def check(spec: SweepSpec) -> None:
    """Errors naming the key: owned keys, empty axes, repeated trials, option ranges."""
    keys = [a.key for a in spec.axes]
    fixed = [o.lstrip("+~").partition("=")[0] for o in spec.overrides]
    for key in keys + fixed:
        if key in OWNED_KEYS:
            raise ConfigError(
                f"{key}: the sweep sets it for every trial (sweep.out_dir for the directory, "
                f"sweep.ray_address for the cluster, `gapray sweep resume=DIR` to continue)",
                [key],
            )
    dup = {k for k in keys if keys.count(k) > 1} | set(keys) & set(fixed)
    if dup:
        raise ConfigError(f"{sorted(dup)[0]}: both swept and fixed (or swept twice)", sorted(dup))
    for a in spec.axes:
        if not a.values or (a.kind == GRID and len(a.values) != len({repr(v) for v in a.values})):
            raise ConfigError(f"{a.key}: a sweep axis needs distinct values, got {a.values}", [a.key])
    if not spec.axes:
        raise ConfigError("sweep: no axes (give a key several values, e.g. learner.beta=0.05,0.1)", ["axes"])
    if spec.num_samples < 1:
        raise ConfigError(f"sweep.num_samples={spec.num_samples}: must be >= 1", ["sweep.num_samples"])
    if spec.num_samples > 1 and not any(a.kind in RANDOM_KINDS for a in spec.axes):
        raise ConfigError(
            f"sweep.num_samples={spec.num_samples}: without a random axis every sample of a grid point "
            f"is the same run; sweep {spec.seed_key} for repeats",
            ["sweep.num_samples"],
        )
    if spec.max_failures < 0:
        raise ConfigError(f"sweep.max_failures={spec.max_failures}: must be >= 0", ["sweep.max_failures"])
    if spec.max_concurrent < 0:
        raise ConfigError(
            f"sweep.max_concurrent={spec.max_concurrent}: must be >= 0", ["sweep.max_concurrent"]
        )
    if spec.bootstrap < 100:
        raise ConfigError(f"sweep.bootstrap={spec.bootstrap}: must be >= 100", ["sweep.bootstrap"])
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name):
        raise ConfigError(f"sweep.name={spec.name!r}: letters, digits, _ . - only", ["sweep.name"])
    if spec.pairs_follow_n and PAIRS_KEY in keys + fixed:
        raise ConfigError(
            f"{PAIRS_KEY}: set by sweep.pairs_follow_n=true (N // 2 per trial); drop one of the two",
            [PAIRS_KEY, "sweep.pairs_follow_n"],
        )
    if spec.pairs_follow_n and N_KEY not in keys:
        raise ConfigError(f"sweep.pairs_follow_n=true: {N_KEY} is not swept", ["sweep.pairs_follow_n"])


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid axes (random axes left out), in axis order."""
    grid = [a for a in spec.axes if a.kind == GRID]
    return [
        dict(zip([a.key for a in grid], combo, strict=True))
        for combo in itertools.product(*(a.values for a in grid))
    ]


def check_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Points whose configs must validate before anything starts: every grid point with each
    random axis at its first value (low bound), then each random axis at its last (high)."""
    rand = [a for a in spec.axes if a.kind in RANDOM_KINDS]
    base = [{**p, **{a.key: a.values[0] for a in rand}} for p in grid_points(spec)]
    extra = [{**base[0], a.key: v} for a in rand for v in a.values[1:]]
    return base + extra


def trial_overrides(spec: SweepSpec, values: dict[str, Any]) -> list[str]:
    """The `gapray run` overrides of the trial at `values` (the run directory aside)."""
    out = [*spec.overrides, *(f"{k}={override_text(v)}" for k, v in values.items())]
    if spec.pairs_follow_n:
        out.append(f"{PAIRS_KEY}={max(1, int(values[N_KEY]) // 2)}")
    return [*out, "run.progress=false"]


def override_text(v: Any) -> str:
    """A value as hydra reads it back (0.1 -> "0.1", True -> "true", None -> "null")."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def trial_slug(values: dict[str, Any], trial_id: str | None = None) -> str:
    """The trial's run directory name: its values ("learner.beta=0.1,run.seed=0"), a hash when
    long; with the Tune trial id when random axes could repeat values."""
    text = ",".join(f"{k}={override_text(v)}" for k, v in values.items())
    slug = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    if len(slug) > 100:
        slug = slug[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return f"{slug}-{trial_id}" if trial_id else slug


def resolve_out_dir(spec: SweepSpec) -> Path:
    return Path(spec.out_dir.replace("{timestamp}", time.strftime("%Y%m%d-%H%M%S"))).resolve()


def to_dict(spec: SweepSpec) -> dict:
    """What <sweep dir>/sweep.yaml holds (resume reads it back with from_dict)."""
    d = dataclasses.asdict(spec)
    d["axes"] = [dataclasses.asdict(a) for a in spec.axes]
    return d


def from_dict(d: dict) -> SweepSpec:
    d = dict(d)
    axes = [Axis(**a) for a in d.pop("axes", [])]
    return SweepSpec(axes=axes, **d)


def _bounds(key: str, text: str, log: bool = False) -> list[float]:
    parts = [_value(v) for v in split_top(text)]
    if len(parts) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in parts):
        raise ConfigError(f"{key}: interval takes two numbers (low, high), got {text!r}", [key])
    lo, hi = float(parts[0]), float(parts[1])
    if not lo < hi or (log and lo <= 0):
        raise ConfigError(
            f"{key}: interval({lo}, {hi}) needs low < high{' and low > 0 (log)' if log else ''}", [key]
        )
    return [lo, hi]


def _value(text: str) -> Any:
    """A command-line value as YAML reads it (0.1 float, 3 int, true bool, dpo str); 1e-5 is a
    float, as hydra reads it (YAML 1.1 alone would keep it a string)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(v, dict | list) or (v is None and text.strip() not in ("null", "~")) else v


def _set_option(spec: SweepSpec, name: str, value: Any, from_yaml: bool = False) -> None:
    if name not in OPTION_KEYS:
        import difflib

        close = difflib.get_close_matches(name, OPTION_KEYS, n=1)
        hint = f"; did you mean 'sweep.{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown sweep option 'sweep.{name}'{hint} (options: {', '.join(OPTION_KEYS)})",
            [f"sweep.{name}"],
        )
    want = {f.name: f.type for f in dataclasses.fields(SweepSpec)}[name]
    v = value if from_yaml else _value(str(value))
    ok = {
        "int": isinstance(v, int) and not isinstance(v, bool),
        "bool": isinstance(v, bool),
        "str": isinstance(v, str | int | float) and not isinstance(v, bool),
        "str | None": v is None or isinstance(v, str),
    }[want]
    if not ok:
        raise ConfigError(f"sweep.{name}: expected {want}, got {value!r}", [f"sweep.{name}"])
    setattr(spec, name, str(v) if want == "str" else v)
