"""`gapray diagnose MODEL`: the paper's diagnosis as a command. How large is a model's internal
gap (the share of its own images its own understanding rejects) over prompt sets of increasing
difficulty, and where does it come from: external judges split the rejected images into weak
generation (the judge rejects them too) and misunderstanding (the judge accepts them).

    stats.py    quadrants, the split, Cohen's kappa, bootstrap intervals (pure functions)
    sets.py     the prompt sets of increasing difficulty (GenEval, harder GenEval-style, ...)
    compute.py  the measurement: images on the generation pool, self and external verdicts
    report.py   table (Markdown + Parquet), PNG plots, the HTML page
    command.py  the command line
"""
