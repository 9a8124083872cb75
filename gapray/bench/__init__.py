"""`gapray bench`: throughput benchmarks of the loop's stages; tables on stdout, files under
benchmarks/results/.

    gapray bench loop [options] [overrides]   # pooled (Ray roles) vs sequential (one process)
    gapray bench generation [options]         # transformers vs vLLM images/s
    gapray bench paper [options] [overrides]  # the paper's rows on the toy world, over seeds
    gapray bench plan [options] [overrides]   # the memory plan vs measured peaks per role
    gapray bench pipeline [options] [overrides]  # sync vs async pipeline on the same roles

Each subcommand lives in its own module (`gapray/bench/<name>.py`, with a `main(argv)`);
`gapray bench <name> --help` shows its options.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

SUBCOMMANDS = {
    "loop": "gapray.bench.loop",
    "generation": "gapray.bench.generation",
    "paper": "gapray.bench.paper",
    "plan": "gapray.bench.plan",
    "pipeline": "gapray.bench.pipeline",
}


def _jsonable(v):
    """json default: numpy scalars and arrays as Python values, anything else (paths) as text."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def write_results(out: Path, stem: str, res: dict, table: str) -> tuple[Path, Path]:
    """<out>/<stem>.json (every number) and .md (the printed table), each written atomically:
    a bench rewrites them while it runs, and a kill must not leave half a table."""
    from gapray.storage.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write_text(js, json.dumps(res, indent=2, default=_jsonable) + "\n")
    atomic_write_text(md, table if table.endswith("\n") else table + "\n")
    return js, md


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"gapray bench: unknown benchmark {name!r} (one of: {', '.join(SUBCOMMANDS)})", file=sys.stderr)
        return 2
    return importlib.import_module(SUBCOMMANDS[name]).main(rest) or 0
