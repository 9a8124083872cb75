"""`gapray plan [overrides]`: the per-role table of the memory plan (`format_plan`), the
config it plans (`plan_from_overrides`: a published layout by its model group) and `main`."""

from __future__ import annotations

import sys

from gapray.plan.check import check_plan
from gapray.plan.roles import GIB, Plan, _gib, build_plan
from gapray.plan.sizes import LAYOUTS


def format_plan(plan: Plan) -> str:
    """The plan as a table: per role its lines, total, budget and verdict."""
    out = [f"memory plan: model {plan.model}; GPU memory {_gib(plan.gpu_memory)} ({plan.gpu_source})", ""]
    out.append(f"| {'role':<10} | {'what':<26} | {'GiB':>9} | note |")
    out.append(f"|{'-' * 12}|{'-' * 28}|{'-' * 11}|------|")
    for rp in plan.roles.values():
        where = f"{rp.count} x {rp.gpus:g} GPU" if rp.gpus > 0 else f"{rp.count} x CPU"
        for i, line in enumerate(rp.lines):
            role = rp.role if i == 0 else ""
            out.append(f"| {role:<10} | {line.what:<26} | {line.bytes / GIB:>9.3f} | {line.note} |")
        verdict = "unchecked" if rp.budget is None else ("fits" if rp.fits else "DOES NOT FIT")
        budget = "" if rp.budget is None else f" of {_gib(rp.budget)}"
        out.append(
            f"| {'':<10} | {'total per actor':<26} | {rp.total / GIB:>9.3f} | {where}{budget}: {verdict} |"
        )
    return "\n".join(out)


def plan_from_overrides(overrides: list[str]):
    """(cfg, model) for `gapray plan`: `model=janus_pro_7b` without model.name plans the
    published layout (the config is composed with a stand-in name and the layout planned)."""
    from gapray.config import load_config

    keys = {o.lstrip("+~").partition("=")[0]: o.partition("=")[2] for o in overrides}
    group = keys.get("model")
    if group in LAYOUTS and "model.name" not in keys:
        cfg = load_config([*overrides, "model.name=janus_pro_shape"])
        return cfg, group
    return load_config(overrides), None


def main(argv: list[str]) -> int:
    """`gapray plan [overrides]`: print the per-role table; exit 2 when a role does not fit."""
    if argv[:1] in (["-h"], ["--help"]):
        import gapray.plan

        print(gapray.plan.__doc__)
        return 0
    from gapray.config import ConfigError

    try:
        cfg, model = plan_from_overrides(list(argv))
        plan = build_plan(cfg, model=model)
        errors = check_plan(cfg, model=model)
    except ConfigError as err:
        print(f"gapray plan: {err}", file=sys.stderr)
        return 2
    if model is not None:
        print(f"(no model.name given: planned on the published {model} layout, gapray.plan.janus_layout)")
    print(format_plan(plan))
    for e in errors:
        print(f"gapray plan: {e}", file=sys.stderr)
    return 2 if errors else 0
