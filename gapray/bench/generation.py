"""`gapray bench generation`: the two generation backends against transformers' own generate.

Three candidates generate the same rows (prompts x seeds, CFG) from the same weights, in one run:

    transformers  JanusForConditionalGeneration.generate(generation_mode="image") (its static
                  cache, its CFG logits processor, torch.multinomial)
    hf            gapray's JanusAdapter.generate (static KV cache, per-row seeded sampling on
                  the model's device, log-probs of every drawn token)
    vllm          gapray's Janus model inside vLLM (VllmJanusEngine: CFG pairs through the
                  batch-level logits processor, logits over the image codes only)

Timing: per batch size, one warm-up call of each, then `--repeats` rounds in which the three run
one after another in a rotated order, so load from other jobs on the machine hits all alike; a
row reports the median. ms per step = call time / image tokens (the prompt's prefill included).
The load average (1 min) is read before and after each batch size.

Tokens: with temperature 0 (greedy) and CFG, the three are one computation (same prompt rows,
the unconditional row built the same way, uncond + s * (cond - uncond), argmax; no sampler
involved, so the three samplers' different random streams do not matter), so before the timing
each backend's greedy tokens are checked equal to transformers' on the rows of the largest
batch size up to 16. The
prompts of a row set have the same token length: transformers' generate gives no position ids
under left padding, gapray's backends count positions from the first real token.

    gapray bench generation --model janus_pro_shape   # batch sizes 1 4 16 64: ~10.5 min on 2 CPU cores
    gapray bench generation --model toy --batch-sizes 1 4 16 64

Prints a Markdown table and writes <out>/generation-<model>-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gapray.bench import write_results

PROMPT_POOL = [
    "two blue squares",
    "a green triangle",
    "one yellow cross",
    "a red circle",
    "a photo of a red circle",
    "two green squares",
    "one blue triangle",
    "a yellow circle",
]
TOY = Path(__file__).resolve().parents[1] / "toy" / "checkpoint"
CANDIDATES = ("transformers", "hf", "vllm")


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gapray bench generation", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", default="janus_pro_shape", help="janus_pro_shape, toy, tiny, or a checkpoint dir"
    )
    ap.add_argument("--gpu", action="store_true", help="run on the GPU (bfloat16)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per batch size")
    ap.add_argument("--cfg-scale", type=float, default=5.0)
    ap.add_argument(
        "--temperature", type=float, default=1.0, help="for the timed calls (the check is greedy)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (this process)")
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    ap.add_argument("--out", default="benchmarks/results")
    return ap.parse_args(argv)


def _model(args, workdir: Path):
    """(label, adapter, checkpoint dir for vLLM, dtype name)."""
    from gapray.models import load_model
    from gapray.models.janus import JanusAdapter

    dtype = "bfloat16" if args.gpu else "float32"
    device = "cuda" if args.gpu else "cpu"
    if args.model in ("janus_pro_shape", "tiny"):
        adapter = load_model(args.model)
        path = workdir / args.model
        adapter.save_pretrained(path)
        label = args.model
    else:
        path = TOY if args.model == "toy" else Path(args.model)
        label = "toy" if args.model == "toy" else path.name
    adapter = JanusAdapter.from_pretrained(path, dtype=getattr(torch, dtype), device=device)
    return label, adapter, path, dtype


def same_length_prompts(adapter, n: int) -> list[str]:
    """n prompts (cycling) of one token length: the pool's most common length."""
    from gapray.models.janus import gen_prompt_ids

    lengths = {p: len(gen_prompt_ids(adapter.tokenizer, adapter.gen_template, p)[0]) for p in PROMPT_POOL}
    common = statistics.mode(lengths.values())
    pool = [p for p in PROMPT_POOL if lengths[p] == common]
    return [pool[i % len(pool)] for i in range(n)]


def transformers_generate(adapter, prompts: list[str], cfg_scale: float, temperature: float) -> torch.Tensor:
    """transformers' own Janus image generation on the adapter's model and prompt rows."""
    import copy

    ids, mask = adapter._encode_gen_prompts(prompts, cfg=False)
    gen = copy.deepcopy(adapter.model.generation_config)
    # What a Janus checkpoint's generation_config.json holds: the unconditional row keeps <bos>
    # and <begin_of_image>, every other token becomes pad.
    gen.bos_token_id, gen.pad_token_id = ids[0, 0].item(), adapter.pad_id
    gen.generation_kwargs = {"boi_token_id": ids[0, -1].item()}
    gen.do_sample = temperature > 0
    gen.temperature = temperature if temperature > 0 else 1.0
    gen.top_k, gen.top_p = None, None
    out = adapter.model.generate(
        ids,
        attention_mask=mask,
        generation_config=gen,
        generation_mode="image",
        guidance_scale=cfg_scale,
        max_new_tokens=adapter.num_image_tokens,
    )
    return out if torch.is_tensor(out) else out.sequences


def _callers(adapter, engine, names):
    calls = {
        "transformers": lambda p, s, c, t: transformers_generate(adapter, p, c, t),
        "hf": lambda p, s, c, t: adapter.generate(p, cfg_scale=c, temperature=t, seed=s, batch_size=len(p)),
        "vllm": lambda p, s, c, t: engine.generate(p, s, c, t),
    }
    return {n: calls[n] for n in names}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """(timing rows, greedy checks)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    torch.set_num_threads(args.threads)
    names = list(args.candidates)
    with tempfile.TemporaryDirectory() as tmp:
        label, adapter, path, dtype = _model(args, Path(tmp))
        T = adapter.num_image_tokens
        engine = None
        if "vllm" in names:
            from gapray.backends.vllm_worker import VllmJanusEngine

            engine = VllmJanusEngine(
                path,
                dtype=dtype,
                max_num_seqs=2 * max(args.batch_sizes),
                enforce_eager=not args.gpu,
                kv_cache_gb=None if args.gpu else 0.1 + 2 * max(args.batch_sizes) * (T + 64) * 4e-6,
            )
        calls = _callers(adapter, engine, names)
        # Greedy CFG check on the rows of the largest batch size up to 16 (at least 2 rows).
        b0 = max(2, max(b for b in args.batch_sizes if b <= 16) if min(args.batch_sizes) <= 16 else 2)
        prompts, seeds = same_length_prompts(adapter, b0), list(range(b0))
        ref = transformers_generate(adapter, prompts, args.cfg_scale, 0.0).cpu()
        checks = []
        for n in names:
            if n == "transformers":
                continue
            got = calls[n](prompts, seeds, args.cfg_scale, 0.0).cpu()
            checks.append(
                dict(
                    backend=n,
                    rows=b0,
                    equal=bool(torch.equal(got, ref)),
                    agree=float((got == ref).float().mean()),
                )
            )
        rows = []
        for b in args.batch_sizes:
            prompts, seeds = same_length_prompts(adapter, b), list(range(b))
            times: dict[str, list[float]] = {n: [] for n in names}
            load0 = os.getloadavg()[0]
            for n in names:  # warm-up
                calls[n](prompts, seeds, args.cfg_scale, args.temperature)
            for r in range(args.repeats):
                order = names[r % len(names) :] + names[: r % len(names)]
                for n in order:
                    _sync()
                    t0 = time.perf_counter()
                    calls[n](prompts, seeds, args.cfg_scale, args.temperature)
                    _sync()
                    times[n].append(time.perf_counter() - t0)
            load1 = os.getloadavg()[0]
            row = dict(
                model=label,
                device="cuda" if args.gpu else "cpu",
                dtype=dtype,
                image_tokens=T,
                codebook=adapter.codebook_size,
                cfg_scale=args.cfg_scale,
                temperature=args.temperature,
                batch=b,
                repeats=args.repeats,
                load_before=load0,
                load_after=load1,
            )
            base = statistics.median(times["transformers"]) if "transformers" in times else None
            for n in names:
                med = statistics.median(times[n])
                row[f"{n}_s"] = med
                row[f"{n}_all_s"] = times[n]
                row[f"{n}_images_per_s"] = b / med
                row[f"{n}_ms_per_step"] = 1e3 * med / T
                if base is not None:
                    row[f"{n}_over_transformers"] = base / med
            rows.append(row)
            print(_table([row], names), flush=True)
    return rows, checks


def _table(rows: list[dict], names: list[str]) -> str:
    head = "| model | batch | " + " | ".join(f"{n} images/s (ms/step)" for n in names)
    head += " | " + " | ".join(f"{n}/transformers" for n in names if n != "transformers") + " | load 1 min |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r[f'{n}_images_per_s']:.3f} ({r[f'{n}_ms_per_step']:.2f})" for n in names]
        ratios = [
            f"{r[f'{n}_over_transformers']:.2f}x"
            for n in names
            if n != "transformers" and f"{n}_over_transformers" in r
        ]
        lines.append(
            f"| {r['model']} | {r['batch']} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(ratios)
            + f" | {r['load_before']:.1f} -> {r['load_after']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if "vllm" in args.candidates:
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            print(
                f"gapray bench generation: vllm is not importable ({err}); see docs/vllm_backend.md",
                file=sys.stderr,
            )
            return 2
    if "transformers" not in args.candidates:
        print(
            "gapray bench generation: --candidates must include transformers (the reference)", file=sys.stderr
        )
        return 2
    if args.gpu and not torch.cuda.is_available():
        print("gapray bench generation --gpu: no CUDA GPU here", file=sys.stderr)
        return 2
    if args.model not in ("janus_pro_shape", "tiny"):
        path = TOY if args.model == "toy" else Path(args.model)
        if not (path / "config.json").is_file():
            print(f"gapray bench generation: no checkpoint at {path} (config.json missing)", file=sys.stderr)
            return 2
    rows, checks = run(args)
    names = list(args.candidates)
    table = _table(rows, names)
    check_lines = "\n".join(
        f"- greedy CFG {args.cfg_scale:g}, {c['rows']} rows: {c['backend']} tokens "
        f"{'EQUAL to' if c['equal'] else 'DIFFER from'} transformers' generate "
        f"(agreement {100 * c['agree']:.2f}%)"
        for c in checks
    )
    text = f"{table}\n\n{check_lines}\n"
    print(text)
    meta = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": args.threads,
        "argv": argv,
        "greedy_checks": checks,
    }
    stem = f"generation-{rows[0]['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    write_results(Path(args.out), stem, {"meta": meta, "rows": rows}, text)
    return 0 if all(c["equal"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
