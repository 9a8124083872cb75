"""Evaluation of generated images against prompt metadata.

`gapray.eval.geneval` holds the GenEval rule engine: it takes a `Prompt` (GenEval schema) and the
detections a `Detector` found in one image, and decides whether the image satisfies the prompt;
`score_geneval` aggregates per-image verdicts into GenEval's task and overall scores.
"""
