"""`gapray sweep`: scaling studies on Ray Tune, one trial = one whole `gapray run`.

    spec.py     the command line / sweep YAML -> axes, shared overrides, Tune settings (pure)
    trial.py    the Tune trainable: one trial's gapray run inside the trial's placement group
    runner.py   the driver: validate every trial, Tuner.fit / Tuner.restore, write the results
    table.py    the results table, grouped over seeds with bootstrap 95% intervals (pure)
    plots.py    scaling plots (delta against each axis; gain against compute)
    html.py     index.html joining the tables, the plots and each trial's report

See docs/sweeps.md for a worked scaling study.
"""

from gapray.sweep.runner import main

__all__ = ["main"]
