"""`gapray bench generation`: images/s of the two generation backends, side by side.

Both backends generate the same rows (prompts x seeds) with CFG from the same checkpoint; the
first call of each batch size is a warm-up and is not counted. `hf` is `JanusAdapter.generate`
(transformers, batched with a KV cache); `vllm` is `VllmJanusEngine.generate` (gapray's Janus model
inside vLLM, CFG pairs through the batch-level logits processor).

    gapray bench generation                          # CPU: the shipped toy checkpoint
    gapray bench generation --batch-sizes 4 16 64 --repeats 3
    gapray bench generation --gpu                    # Janus-Pro-1B-sized random model, 576 tokens,
                                                     # CFG 5, batch sweep; an error without a GPU

Prints a Markdown table (images/s per backend and vllm/hf) and writes
<out>/generation-<model>-<timestamp>.json and .md. Numbers are what they are on the machine that
ran them; on a shared CPU they move with the load.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from gapray.bench import write_results

PROMPTS = ["a photo of a red circle", "two blue squares", "a green triangle", "one yellow cross"]
TOY = Path(__file__).resolve().parents[1] / "toy" / "checkpoint"


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gapray bench generation", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="toy", help="toy (the shipped checkpoint), tiny, or a checkpoint dir")
    ap.add_argument("--gpu", action="store_true", help="Janus-Pro-1B-sized random model on the GPU")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per batch size")
    ap.add_argument("--cfg-scale", type=float, default=5.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--out", default="benchmarks/results")
    return ap.parse_args(argv)


def _checkpoint(args, workdir: Path) -> tuple[str, Path, str]:
    """(label, checkpoint dir, dtype)."""
    if args.gpu:
        from transformers import JanusForConditionalGeneration

        from gapray.models.janus import JanusAdapter
        from gapray.models.tiny import janus_pro_config, tiny_janus

        small = tiny_janus()  # its word tokenizer: prompt ids are all < 102400
        with torch.device("cuda"):
            model = JanusForConditionalGeneration(janus_pro_config("1b")).to(torch.bfloat16).eval()
        JanusAdapter(model, small.processor).save_pretrained(workdir / "janus-pro-1b-random")
        del model
        torch.cuda.empty_cache()
        return "janus-pro-1b-random", workdir / "janus-pro-1b-random", "bfloat16"
    if args.model == "tiny":
        from gapray.models.tiny import tiny_janus

        tiny_janus().save_pretrained(workdir / "tiny")
        return "tiny", workdir / "tiny", "float32"
    path = TOY if args.model == "toy" else Path(args.model)
    return "toy" if args.model == "toy" else path.name, path, "float32"


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def run(args: argparse.Namespace) -> list[dict]:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from gapray.backends.vllm_worker import VllmJanusEngine
    from gapray.models.janus import JanusAdapter

    device = "cuda" if args.gpu else "cpu"
    sizes = args.batch_sizes or ([1, 8, 32, 64] if args.gpu else [4, 16, 64])
    with tempfile.TemporaryDirectory() as tmp:
        label, path, dtype = _checkpoint(args, Path(tmp))
        hf = JanusAdapter.from_pretrained(path, dtype=getattr(torch, dtype), device=device)
        tokens = hf.num_image_tokens
        engine = VllmJanusEngine(
            path,
            dtype=dtype,
            max_num_seqs=2 * max(sizes),
            enforce_eager=not args.gpu,  # CUDA graphs on the GPU; eager starts fastest on CPU
            gpu_memory_utilization=0.5,
            kv_cache_gb=None if args.gpu else 0.5,
        )
        rows = []
        for b in sizes:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
            seeds = list(range(b))
            t_hf = _time(
                lambda p=prompts, s=seeds, b=b: hf.generate(
                    p, cfg_scale=args.cfg_scale, temperature=args.temperature, seed=s, batch_size=b
                ),
                args.repeats,
            )
            t_vllm = _time(
                lambda p=prompts, s=seeds: engine.generate(p, s, args.cfg_scale, args.temperature),
                args.repeats,
            )
            rows.append(
                dict(
                    model=label,
                    device=device,
                    dtype=dtype,
                    image_tokens=tokens,
                    cfg_scale=args.cfg_scale,
                    batch=b,
                    hf_images_per_s=b / t_hf,
                    vllm_images_per_s=b / t_vllm,
                    vllm_over_hf=t_hf / t_vllm,
                )
            )
    return rows


def _table(rows: list[dict]) -> str:
    lines = [
        "| model | device | tokens | batch | hf images/s | vllm images/s | vllm/hf |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['device']} | {r['image_tokens']} | {r['batch']} | {r['hf_images_per_s']:.2f} "
            f"| {r['vllm_images_per_s']:.2f} | {r['vllm_over_hf']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        print(
            f"gapray bench generation: vllm is not importable ({err}); see docs/vllm_backend.md",
            file=sys.stderr,
        )
        return 2
    if args.gpu and not torch.cuda.is_available():
        print("gapray bench generation --gpu: no CUDA GPU here", file=sys.stderr)
        return 2
    if not args.gpu and args.model != "tiny":
        path = TOY if args.model == "toy" else Path(args.model)
        if not (path / "config.json").is_file():
            print(f"gapray bench generation: no checkpoint at {path} (config.json missing)", file=sys.stderr)
            return 2
    rows = run(args)
    table = _table(rows)
    print(table)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    stem = f"generation-{rows[0]['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    write_results(Path(args.out), stem, {"meta": meta, "rows": rows}, table)
    return 0
