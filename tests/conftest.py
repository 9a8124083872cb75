"""Shared test settings.

TINY_RUN: overrides for a seconds-long `gapray run` on the tiny random Janus. Its judge says
P(yes) ~ 0.46 to everything, so the paper's rule makes no pair; best-vs-worst pairs with no
floor make one from every prompt, so every step learns and syncs.
"""

TINY_RUN = [
    "model=tiny",
    "pairs=best_worst",
    "pairs.min_chosen=0",
    "curriculum.prompts_per_step=4",
    "generation.images_per_prompt=4",
    "eval.limit=4",
    "eval.images_per_prompt=2",
    "run.progress=false",
]
