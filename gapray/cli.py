"""The `gapray` command: one dispatcher, each subcommand's parsing lives beside its code.

gapray eval CHECKPOINT [...]     # toy-world evaluation (CHECKPOINT may be `toy`)
gapray diagnose MODEL [...]      # the internal gap per prompt set, split by external judges
gapray toy pretrain [...]        # train the toy model from scratch
gapray demo [...]                # generate, decode and self-judge with a model (smoke run)
"""

from __future__ import annotations

import sys

USAGE = """usage: gapray <command> [args]

commands:
  run [overrides]   the online self-improvement run (local Ray, or the cluster's)
  sweep [axes]      a scaling study on Ray Tune: one trial = one run (docs/sweeps.md)
  eval CHECKPOINT   evaluate a model on the toy world (CHECKPOINT: a path, or `toy`)
  diagnose MODEL    the internal gap per prompt set, split by external judges (MODEL: a path, or `toy`)
  toy pretrain      train the toy unified model from scratch
  report RUN_DIR    an HTML report of a run (curves, per-tag table, before/after grids)
  plan [overrides]  the memory plan: bytes per GPU of each role, and whether it fits
  bench loop|generation|paper|pipeline|plan   benchmarks (tables + benchmarks/results/)
  demo              generate, decode and self-judge a few images (smoke run)
Run `gapray <command> --help` for a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "eval":
        from gapray.eval.toy_eval import main as run
    elif cmd == "toy" and rest[:1] == ["pretrain"]:
        from gapray.toy.pretrain import main as run

        rest = rest[1:]
    elif cmd == "diagnose":
        from gapray.diagnose.command import main as run
    elif cmd == "run":
        from gapray.run import main as run
    elif cmd == "sweep":
        from gapray.sweep import main as run
    elif cmd == "report":
        from gapray.report import main as run
    elif cmd == "plan":
        from gapray.plan import main as run
    elif cmd == "bench":
        from gapray.bench import main as run
    elif cmd == "demo":
        from gapray.demo import main as run
    else:
        print(f"gapray: unknown command {' '.join(argv[:2])!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
