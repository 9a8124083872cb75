"""The toy world: a tiny GenEval-style synthetic world for CPU runs and tests.

Four filled shapes in six colours on a 4x4 grid of 8x8 cells (32x32 RGB images, one cell = one
image token of an 8x-downsampling VQ). `world` holds the vocabulary, the prompt generator
(GenEval's six tags and schema, seeded train/test splits), scene sampling and near-miss prompts;
`render` draws ground-truth images; `detector` is the exact verifier whose detections feed the
GenEval rule engine (`gapray.eval.geneval.evaluate_image`).

    from gapray.toy.world import make_splits, sample_scene, near_miss
    from gapray.toy.render import render
    from gapray.toy.detector import ToyDetector

    prompts = make_splits(seed=0)["train"]
    image = render(sample_scene(prompts[0], np.random.default_rng(0)))
    detections = ToyDetector().detect(image)
"""
