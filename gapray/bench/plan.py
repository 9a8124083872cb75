"""`gapray bench plan`: the memory plan against measured peaks, role by role, on this machine.

Each role runs in a fresh process (its memory is its own) with the real worker class
(LearnerWorker, GenerationWorker, RewardWorker; no Ray): a warm-up call allocates what stays
(gradients, AdamW state, the allocator's pools), then one measured call -- one DPO update of one
micro-batch, one generation batch, one judge batch -- with the process's peak RSS reset before it
(Linux: /proc/self/clear_refs, then VmHWM). The measured peak of a role is

    the bytes of the tensors it holds before the call (parameters, buffers, gradients and optimizer
    state of the policy and the reference, each storage counted once)
    + the peak RSS during the call - the RSS before it (activations, logits, KV cache, temporaries)

which leaves out the host-side objects that are not the plan's business (the tokenizers, the
Python heap); the raw RSS figures are reported too. On CPU in float32 (the roles' device here),
with glibc's mmap threshold fixed at 128 KiB so that freed tensors leave the RSS.

    python -m gapray.bench.plan                                  # janus_pro_shape, all three roles
    python -m gapray.bench.plan --roles learner --pairs 4 learner.micro_batch_size=4
    python -m gapray.bench.plan --out benchmarks/results
    python -m gapray.bench.plan --measure learner > learner.json   # one role, then the table of
    python -m gapray.bench.plan --collect learner.json generation.json reward.json  # several

Prints the table (plan vs measured per role, the ratio) and writes
<out>/plan-<model>-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROLES = ("learner", "generation", "reward")
TOLERANCE = 0.25
"""The plan must lie within 25% of the measured peak (issue 13's acceptance)."""
DEFAULTS = [
    "model=janus_pro_shape",
    "learner.micro_batch_size=2",
    "generation.batch_size=4",
    "reward.batch_size=4",
]


def _status_mib() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _fixed_mmap_threshold() -> None:
    """glibc: serve every allocation of 128 KiB or more by mmap and give it back on free (a
    fixed threshold turns off glibc's sliding one, which moves up to 32 MiB and then keeps freed
    feature maps in its heap), so the RSS follows the bytes alive. Measured runs otherwise
    differed by a third between two runs of the same call."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 128 * 1024) and libc.mallopt(m_trim_threshold, 128 * 1024)):
        raise RuntimeError("mallopt failed: cannot fix glibc's mmap threshold")


def tensor_bytes(modules: list, optimizer=None) -> int:
    """Bytes of the distinct storages behind the modules' parameters, gradients and buffers and
    the optimizer's state tensors (shared tensors counted once)."""
    import torch

    seen: dict[int, int] = {}

    def add(t) -> None:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())

    for m in modules:
        for p in m.parameters():
            add(p)
            add(p.grad)
        for b in m.buffers():
            add(b)
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                add(v)
    return sum(seen.values())


def _prompts(n: int) -> list[str]:
    from gapray.data.prompts import load_prompts

    return [p.text for p in load_prompts("geneval")[:n]]


def _prompt_tokens(adapter, prompts: list[str]) -> int:
    """The longest prompt row of the batch in tokens, as the model encodes it (left-padded to it)."""
    from gapray.models.janus import gen_prompt_ids

    return max(len(gen_prompt_ids(adapter.tokenizer, adapter.gen_template, p)[0]) for p in prompts)


def measure(role: str, overrides: list[str], pairs: int) -> dict:
    """Run one role's call in this process; the measured figures and the plan's, as a dict."""
    import numpy as np
    import torch

    from gapray.config import load_config
    from gapray.plan import build_plan

    _fixed_mmap_threshold()
    torch.set_num_threads(2)
    cfg = load_config(overrides)
    gc.collect()
    rss_start = _status_mib()["VmRSS"]
    if role == "learner":
        from gapray.workers.learner import LearnerWorker, LogprobSettings

        worker = LearnerWorker(
            cfg.model,
            cfg.learner,
            rank=0,
            world_size=1,
            master="",
            seed=0,
            threads=2,
            logprobs=LogprobSettings.from_config(cfg.learner, cfg.generation),
        )
        prompts = _prompts(pairs)
        rng = np.random.default_rng(0)
        T, K = worker.policy.num_image_tokens, worker.policy.codebook_size
        batch = {
            "prompts": prompts,
            "chosen": rng.integers(0, K, size=(pairs, T)),
            "rejected": rng.integers(0, K, size=(pairs, T)),
        }
        adapter = worker.policy

        def call(rows: int = pairs):
            return worker.update(batch)  # the whole batch: the warm-up allocates what persists

        def held() -> int:
            mods = [worker.policy.model] + ([worker.reference.model] if worker.reference is not None else [])
            return tensor_bytes(mods, worker.optimizer)

    elif role == "generation":
        from gapray.workers.generation import GenerationWorker

        worker = GenerationWorker(cfg.model, cfg.generation, threads=2)
        prompts = _prompts(cfg.generation.batch_size)
        adapter = worker.model

        def call(rows: int = len(prompts)):
            return worker.generate(prompts[:rows], list(range(rows)))

        def held() -> int:
            return tensor_bytes([worker.model.model])

    elif role == "reward":
        from gapray.workers.reward import RewardWorker

        worker = RewardWorker(cfg.model, cfg.reward, threads=2)
        prompts = _prompts(cfg.reward.batch_size)
        adapter = worker.model
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, adapter.codebook_size, size=(len(prompts), adapter.num_image_tokens))

        def call(rows: int = len(prompts)):
            return worker.score(prompts[:rows], tokens[:rows])

        def held() -> int:
            return tensor_bytes([worker.model.model])

    else:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    t0 = time.perf_counter()
    # Warm-up: the learner's gradients and AdamW state (its whole batch); the sampling and
    # judging paths once on one row (nothing persists there).
    call() if role == "learner" else call(1)
    warm_s = time.perf_counter() - t0
    gc.collect()
    rss_before = _status_mib()["VmRSS"]
    holds = held()
    _reset_peak()
    t0 = time.perf_counter()
    call()
    call_s = time.perf_counter() - t0
    peak = _status_mib()["VmHWM"]
    prompt_tokens = _prompt_tokens(adapter, prompts)
    plan = build_plan(cfg, gpu_memory=None, prompt_tokens=prompt_tokens).roles[role]
    measured = holds + (peak - rss_before)
    return {
        "role": role,
        "overrides": overrides,
        "plan_bytes": plan.total,
        "plan_lines": [{"what": line.what, "bytes": line.bytes, "note": line.note} for line in plan.lines],
        "measured_bytes": measured,
        "held_tensor_bytes": holds,
        "call_rss_increase_bytes": peak - rss_before,
        "rss_start_bytes": rss_start,
        "rss_before_call_bytes": rss_before,
        "rss_peak_bytes": peak,
        "rss_peak_minus_start_bytes": peak - rss_start,
        "ratio_plan_over_measured": plan.total / measured,
        "prompt_tokens": prompt_tokens,
        "rows": len(prompts),
        "warmup_s": warm_s,
        "call_s": call_s,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def _setting(r: dict) -> str:
    """What a measured row is: its rows, and its overrides that the role reads beyond DEFAULTS."""
    section = {"learner": "learner.", "generation": "generation.", "reward": "reward."}[r["role"]]
    extra = list({o.partition("=")[0]: o for o in r.get("overrides", []) if o.startswith(section)}.values())
    what = f"{r['rows']} pairs" if r["role"] == "learner" else f"{r['rows']} images"
    return " ".join([what, *extra])


def table(results: list[dict], model: str) -> str:
    out = [
        f"memory plan vs measured peak: {model}, CPU float32, one process per role",
        "",
        "| role | setting | plan MiB | measured MiB | plan / measured | held tensors MiB | "
        "call's RSS rise MiB | RSS peak - start MiB | call s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        out.append(
            f"| {r['role']} | {_setting(r)} | {_mib(r['plan_bytes'])} | {_mib(r['measured_bytes'])} | "
            f"{r['ratio_plan_over_measured']:.3f} | {_mib(r['held_tensor_bytes'])} | "
            f"{_mib(r['call_rss_increase_bytes'])} | {_mib(r['rss_peak_minus_start_bytes'])} | {r['call_s']:.2f} |"
        )
    out += ["", "plan lines (MiB):"]
    for r in results:
        lines = ", ".join(f"{line['what']} {_mib(line['bytes'])}" for line in r["plan_lines"])
        out.append(f"- {r['role']} ({_setting(r)}, {r['prompt_tokens']} prompt tokens): {lines}")
    out += [
        "",
        "measured = the bytes of the tensors the role holds before the call (parameters, buffers,",
        "gradients, optimizer state; each storage once) + the peak RSS during the call (VmHWM, reset",
        "before it) - the RSS before it; a warm-up call first; glibc's mmap threshold fixed at 128 KiB;",
        "the real worker classes, float32 on CPU, 2 torch threads. `RSS peak - start` also counts the",
        "tokenizers and the Python heap the plan leaves out. Seconds are on a shared CPU (not speeds).",
    ]
    bad = [
        f"{r['role']} ({_setting(r)})" for r in results if abs(r["ratio_plan_over_measured"] - 1) > TOLERANCE
    ]
    out += ["", f"within {TOLERANCE:.0%}: " + ("all roles" if not bad else "NOT " + ", ".join(bad))]
    return "\n".join(out)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(prog="gapray bench plan", description=__doc__.split("\n")[0])
    ap.add_argument("--roles", default=",".join(ROLES), help="comma-separated roles to measure")
    ap.add_argument("--pairs", type=int, default=2, help="DPO pairs of the learner's measured update")
    ap.add_argument("--out", default="benchmarks/results", help="results directory")
    ap.add_argument("--measure", help="measure one role in this process; its JSON on stdout")
    ap.add_argument(
        "--collect", nargs="+", help="build the table from roles measured before (--measure outputs)"
    )
    return ap.parse_known_args(argv)


def main(argv: list[str]) -> int:
    args, overrides = _parse(argv)
    overrides = list({o.partition("=")[0]: o for o in [*DEFAULTS, *overrides]}.values())  # last wins
    if args.measure:
        print(json.dumps(measure(args.measure, overrides, args.pairs)))
        return 0
    results = []
    for path in args.collect or []:
        results.append(json.loads(Path(path).read_text().strip().splitlines()[-1]))
    for role in [] if args.collect else args.roles.split(","):
        cmd = [
            sys.executable,
            "-m",
            "gapray.bench.plan",
            "--measure",
            role,
            "--pairs",
            str(args.pairs),
            *overrides,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            print(f"gapray bench plan: measuring {role} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"measured {role}", file=sys.stderr)
    model = next(o.partition("=")[2] for o in reversed(overrides) if o.startswith("model="))
    if args.collect:
        overrides = next((r["overrides"] for r in results if "overrides" in r), overrides)
    text = table(results, model)
    print(text)
    from gapray.bench import write_results

    stem = f"plan-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    res = {
        "model": model,
        "overrides": overrides,
        "pairs": args.pairs,
        "machine": platform.platform(),
        "tolerance": TOLERANCE,
        "roles": results,
    }
    js, md = write_results(Path(args.out), stem, res, text)
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
