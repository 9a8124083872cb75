"""`python -m gapray.plan [overrides]`: the same as `gapray plan`."""

import sys

from gapray.plan.command import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
