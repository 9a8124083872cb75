"""Generation backends other than transformers: `vllm_janus` (gapray's Janus model inside vLLM,
with CFG as a batch-level logits processor) and `vllm_worker` (the engine wrapper the generation
worker holds when `generation.backend == "vllm"`). Importing this package imports no vLLM."""
