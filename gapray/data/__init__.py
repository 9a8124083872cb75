"""Prompt sets and the benchmark data shipped with gapray.

`gapray.data.prompts.load_prompts` reads a GenEval-style .jsonl file, a T2I-CompBench-style .txt
file, or a built-in set by name ("geneval", "t2i_compbench/color_train", "t2i_compbench_train")
into a list of `gapray.types.Prompt`. The built-in files live beside this module (README.md
there gives their sources and licences).
"""
