"""`gapray bench`: throughput benchmarks of the loop's stages; tables on stdout, files under
benchmarks/results/.

    gapray bench loop [options] [overrides]   # pooled (Ray roles) vs sequential (one process)
    gapray bench generation [options]         # transformers vs vLLM images/s
    gapray bench paper [options] [overrides]  # the paper's rows on the toy world, over seeds

Each subcommand lives in its own module (`gapray/bench/<name>.py`, with a `main(argv)`);
`gapray bench <name> --help` shows its options.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "loop": "gapray.bench.loop",
    "generation": "gapray.bench.generation",
    "paper": "gapray.bench.paper",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"gapray bench: unknown benchmark {name!r} (one of: {', '.join(SUBCOMMANDS)})", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(SUBCOMMANDS[name])
    except ModuleNotFoundError as err:
        if err.name != SUBCOMMANDS[name]:
            raise
        print(f"gapray bench: {name!r} is not built yet", file=sys.stderr)
        return 2
    return module.main(rest) or 0
