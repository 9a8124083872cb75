"""`gapray bench loop`: per-stage time and throughput of one online step, pooled vs sequential.

Both loops run the same steps of the same config (model, curriculum, prompts, N, seeds),
interleaved step by step so a drifting machine load hits both alike; the first step is a
warm-up and is not counted. Both go through `Controller.step`, so they build
the same batches with the same code; only how a stage reaches its worker differs:

    pooled      the real Ray roles of `gapray run` (`build_roles`): actors in placement groups,
                rows and batches through Ray calls, weights by the transport sync.transport
                selects (`WeightSync`: changed tensors only, bucket by bucket, through the
                object store; `CompiledSync` with sync.transport=compiled_graph: through one
                Ray Compiled Graph). Evaluations and checkpoints are left out.
    sequential  one process, no Ray: the same GenerationWorker, RewardWorker and LearnerWorker
                classes called in-process, one after another; the "sync" is a plain in-memory
                copy of the learner's trainable tensors into the generation (and a following
                reward) model with `apply_update`, the same bytes WeightSync ships.

The loop is synchronous (generate, then judge, then learn, then sync), so on one machine the
pooled loop cannot overlap its stages; it pays Ray's overhead and gains only where a pool has
several workers on free cores. The numbers are what they are on the machine that ran them.

    gapray bench loop                                # the run's model (the toy checkpoint)
    gapray bench loop --model tiny --steps 3 --prompts-per-step 4 --images-per-prompt 4
    gapray bench loop --steps 2 learner.micro_batch_size=4   # config overrides pass through
    gapray bench loop sync.transport=compiled_graph          # the pooled sync through a compiled graph

Prints a Markdown table and writes <out>/loop-<model>-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gapray.bench import write_results
from gapray.config import Config, ConfigError, load_config, to_dict
from gapray.workers.sync import SyncStats, apply_update, bucket_bytes, resolve_transport, trainable_tensors

STAGES = ("generate", "reward", "pairs", "learn", "sync", "step")
STAGE_NAMES = {
    "generate": "generate (N images per prompt)",
    "reward": "reward (decode + judge)",
    "pairs": "pairs",
    "learn": "learn (DPO update)",
    "sync": "sync",
    "step": "whole step",
}
# The tiny random model's judge says ~0.46 to everything: the paper's rule makes no pair, so
# nothing would be learned or synced. Best-vs-worst pairs with no floor exercise every stage.
TINY_DEFAULTS = ("pairs=best_worst", "pairs.min_chosen=0")


# ------------------------------------------------------------------ the in-process stand-ins
@dataclass
class LocalPool:
    """WorkerPool's interface over one in-process worker: every row in one call."""

    worker: object
    actors: list = field(default_factory=list)

    def map_shares(self, method: str, n_rows: int, args_for) -> list:
        return [getattr(self.worker, method)(*args_for(slice(0, n_rows)))]


@dataclass
class LocalLearner:
    """LearnerGroup's interface over one in-process LearnerWorker (world size 1, no Ray)."""

    worker: object

    def update(self, batch: dict) -> dict[str, float]:
        return self.worker.update(batch)


class LocalSync:
    """WeightSync's interface without Ray: copy the learner's trainable tensors (the bytes
    `export_weights` would put in the object store) into each target worker's model."""

    def __init__(self):
        self.version = 0

    def push(self, learner: LocalLearner, targets: list[LocalPool]) -> SyncStats:
        t0 = time.perf_counter()
        version = self.version + 1
        tensors = trainable_tensors(learner.worker.policy.model)
        for pool in targets:
            w = pool.worker
            apply_update(w.model.model, tensors, lora_scaling=w.lora_scaling, merge_state=w.merge_state)
            w.version = version
        self.version = version
        return SyncStats(version, bucket_bytes([tensors]), 1, time.perf_counter() - t0)


def sequential_roles(cfg: Config):
    """The roles of `build_roles`, as plain objects in this process (same classes, same threads)."""
    from gapray.run import Roles, _threads
    from gapray.workers.generation import GenerationWorker
    from gapray.workers.learner import LearnerWorker, LogprobSettings
    from gapray.workers.reward import RewardWorker

    m, g, r, ln = cfg.model, cfg.generation, cfg.reward, cfg.learner
    lora_scaling = m.lora_alpha / m.lora_rank if m.trainable == "lora" else 1.0
    gen = GenerationWorker(m, g, _threads(cfg, g.cpus_per_worker), lora_scaling)
    reward = RewardWorker(m, r, _threads(cfg, r.cpus_per_worker), lora_scaling)
    # K ranks' rows per optimizer step become one rank's accumulated micro-batches: same updates.
    one_rank = dataclasses.replace(ln, num_ranks=1, grad_accum=ln.grad_accum * ln.num_ranks)
    logprobs = LogprobSettings.from_config(ln, g)  # the sampler's CFG weight and temperature
    learner = LearnerWorker(
        m, one_rank, 0, 1, "", cfg.run.seed, _threads(cfg, ln.cpus_per_rank), logprobs=logprobs
    )
    return Roles(
        generation=LocalPool(gen),
        reward=LocalPool(reward),
        learner=LocalLearner(learner),
        groups=[],
    )


# ------------------------------------------------------------------------------ timing loops
@dataclass
class Timed:
    """One loop under test: its controller, run directory and the rows of its steps."""

    ctl: object
    run: object
    setup_s: float
    rows: list = field(default_factory=list)

    def step(self, step: int, warmup: bool) -> None:
        row = self.ctl.step(step)
        tokens = np.asarray(self.run.read_rollouts(step).column("tokens").to_pylist(), dtype=np.int32)
        row["tokens_sha1"] = hashlib.sha1(tokens.tobytes()).hexdigest()[:12]
        row["warmup"] = warmup
        self.rows.append({k: _plain(v) for k, v in row.items()})

    def result(self) -> dict:
        out = {
            "setup_s": self.setup_s,
            "rows": self.rows,
            **summarize([r for r in self.rows if not r["warmup"]]),
        }
        # The receivers' extra memory over every sync, the warm-up's too: under the compiled
        # graph a receiver first touches the channel buffer's pages in the first sync, and they
        # stay resident, so later syncs add next to nothing.
        peaks = [
            (r["sync_receiver_peak_extra_mb"], r["sync_bucket_max_mb"])
            for r in self.rows
            if r.get("sync_receiver_peak_extra_mb") is not None
        ]
        if peaks and out["sync_detail"]:
            out["sync_detail"]["receiver_peak_extra_mb_all_syncs"] = max(p for p, _ in peaks)
            out["sync_detail"]["largest_bucket_mb_all_syncs"] = max(b for _, b in peaks)
        return out


def run_both(cfg: Config, steps: int, warmup: int) -> dict[str, dict]:
    """Build both loops, then run their steps interleaved (sequential first on odd steps, pooled
    first on even ones), so a machine whose load drifts slows both alike."""
    import ray

    from gapray.controller import Controller
    from gapray.placement import check_resources, connect_ray
    from gapray.run import build_roles
    from gapray.storage import RunDir

    threads = torch.get_num_threads()
    where, roles = None, None
    with tempfile.TemporaryDirectory(prefix="gapray-bench-") as tmp:
        try:
            t0 = time.perf_counter()
            seq_ctl = Controller(cfg, RunDir(f"{tmp}/sequential"), sequential_roles(cfg))
            seq_ctl.sync = LocalSync()
            seq = Timed(seq_ctl, seq_ctl.run, time.perf_counter() - t0)
            t0 = time.perf_counter()
            where = connect_ray(cfg)
            check_resources(cfg, ray.cluster_resources())
            roles = build_roles(cfg)
            pooled_ctl = Controller(cfg, RunDir(f"{tmp}/pooled"), roles)
            pooled = Timed(pooled_ctl, pooled_ctl.run, time.perf_counter() - t0)
            niceness = worker_niceness(roles) if where == "local" else None
            for step in range(1, warmup + steps + 1):
                print(f"gapray bench loop: step {step}/{warmup + steps}", file=sys.stderr)
                for loop in (seq, pooled) if step % 2 else (pooled, seq):
                    loop.step(step, warmup=step <= warmup)
        finally:
            if roles is not None:
                roles.shutdown()
            if where == "local":
                ray.shutdown()
            torch.set_num_threads(threads)  # the in-process workers set this process's threads
    return {
        "pooled": {**pooled.result(), "ray": where, "worker_niceness": niceness},
        "sequential": seq.result(),
    }


def worker_niceness(roles) -> dict[str, int]:
    """Each pooled role's scheduling priority (nice value) on this machine: Ray starts its
    workers at nice 15, while the sequential loop runs in this process; on a machine shared
    with other work the two then do not get the CPU alike, so the report says both."""
    pools = {"generation": roles.generation, "reward": roles.reward, "learner": roles.learner}
    return {name: os.getpriority(os.PRIO_PROCESS, pool.placement[0]["pid"]) for name, pool in pools.items()}


def summarize(rows: list[dict]) -> dict:
    """Totals over the measured steps -> seconds per step and throughputs."""
    total = {s: sum(r.get(f"time_{s}", 0.0) for r in rows) for s in STAGES}
    images = sum(r["images"] for r in rows)
    pairs = sum(r.get("pairs", r.get("sft_examples", 0)) for r in rows)
    synced = [r for r in rows if "sync_ms" in r]
    sync_s = sum(r["sync_ms"] for r in synced) / 1000
    sync_mb = sum(r["sync_mb"] for r in synced)
    # Per sync, for the medians: one disturbed sync (another process took the core) moves a
    # mean over a few syncs of a few ms each by tens of percent, either loop's.
    sync_rates = [r["sync_mb"] / max(r["sync_ms"] / 1000, 1e-12) for r in synced]
    return {
        "seconds_per_step": {s: total[s] / len(rows) for s in STAGES},
        # The fastest measured step per stage: on a machine shared with other work, the least
        # disturbed figure (as timeit reports the minimum).
        "best_seconds": {s: min(r.get(f"time_{s}", 0.0) for r in rows) for s in STAGES},
        "throughput": {
            "images_generated_per_s": _rate(images, total["generate"]),
            "images_judged_per_s": _rate(images, total["reward"]),
            "pairs_learned_per_s": _rate(pairs, total["learn"]) if pairs else None,
            "sync_ms": 1000 * sync_s / len(synced) if synced else None,
            "sync_mb": sync_mb / len(synced) if synced else None,
            "sync_mb_per_s": _rate(sync_mb, sync_s) if synced else None,
            "sync_ms_median": float(np.median([r["sync_ms"] for r in synced])) if synced else None,
            "sync_mb_per_s_median": float(np.median(sync_rates)) if synced else None,
            "images_per_s_end_to_end": _rate(images, total["step"]),
        },
        "images": images,
        "pairs": pairs,
        "syncs": len(synced),
        "sync_detail": sync_detail(synced),
    }


SYNC_PARTS = {
    "sync_manifest_ms": "manifest in hand (tensors compared, nothing gathered yet)",
    "sync_export_ms": "every bucket's ref in hand (gathered, put)",
    "sync_apply_ms": "slowest worker's own time, manifest to last bucket applied",
    "sync_ms": "whole push, to the last acknowledgement",
}
COMPILED_SYNC_PARTS = {  # sync.transport=compiled_graph: the driver sees neither manifest nor refs
    "sync_export_ms": "learner's own time over the push's executions (compare, copy, buckets out)",
    "sync_apply_ms": "slowest worker's own time, manifest to last bucket applied",
    "sync_ms": "whole push, to the last acknowledgement",
}


BUCKET_SLACK = 0.05
"""A bucket travels as one flat buffer (each tensor 64-byte aligned) that the receiver maps in whole
4 KiB pages: its resident cost is the bucket's bytes plus that rounding."""


def sync_detail(synced: list[dict]) -> dict:
    """The pooled push, part by part (means over the syncs), the tensors and buckets it sent,
    and the receivers' peak extra memory against the largest bucket (the worst sync)."""
    if not synced or "sync_export_ms" not in synced[0]:
        return {}
    mean = {k: sum(r[k] for r in synced) / len(synced) for k in SYNC_PARTS}
    peaks = [r["sync_receiver_peak_extra_mb"] for r in synced if "sync_receiver_peak_extra_mb" in r]
    return {
        **mean,
        "tensors": sum(r["sync_tensors"] for r in synced) / len(synced),
        "buckets": sum(r["sync_buckets"] for r in synced) / len(synced),
        "largest_bucket_mb": max(r["sync_bucket_max_mb"] for r in synced),
        "receiver_peak_extra_mb": max(peaks) if peaks else None,
        "channel_buffer_mb": max((r.get("sync_channel_buffer_mb", 0.0) for r in synced), default=0.0) or None,
    }


# ------------------------------------------------------------------------------ the report
def machine() -> dict:
    import ray
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        models = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        # this process: the sequential loop and the pooled driver
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "accelerator": torch.cuda.get_device_name(0) if cuda else "none (CPU)",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "transformers": transformers.__version__,
    }


def ratios(pooled: dict, seq: dict) -> dict:
    """Speed-up of the pooled loop over the sequential one (> 1: pooled is faster)."""
    out = {f"time_{s}": _div(seq["seconds_per_step"][s], pooled["seconds_per_step"][s]) for s in STAGES}
    out |= {f"best_time_{s}": _div(seq["best_seconds"][s], pooled["best_seconds"][s]) for s in STAGES}
    for k, v in pooled["throughput"].items():
        s = seq["throughput"][k]
        if k in ("sync_ms", "sync_ms_median"):
            out[k] = _div(s, v)
        elif k != "sync_mb":
            out[k] = _div(v, s)
    return out


def markdown(res: dict) -> str:
    mc, p, s, q = res["machine"], res["pooled"], res["sequential"], res["speedup"]
    thr = res["stage_threads"]
    transport = res["sync_transport"]  # what ran: sync.transport=auto resolved
    lines = [
        f"## gapray bench loop: model `{res['model']}`, {res['steps']} measured step(s) after {res['warmup']} warm-up",
        "",
        f"Machine: {mc['cpu']}, {mc['cpu_count']} CPUs ({mc['cpus_usable']} usable), accelerator "
        f"{mc['accelerator']}, load average {mc['load_average_1m']} at start, {mc.get('load_average_1m_end')} at end; torch threads per stage "
        f"(both loops): generate {thr['generation']}, reward {thr['reward']}, learn {thr['learner']}; "
        f"python {mc['python']}, torch {mc['torch']}, ray {mc['ray']}, transformers {mc['transformers']}.",
        f"Scheduling priority (nice): this process (the sequential loop, the pooled driver) "
        f"{mc.get('niceness')}, pooled workers {_nice(p.get('worker_niceness'))}.",
        f"Batch per step: {res['prompts_per_step']} prompts x {res['images_per_prompt']} images "
        f"= {p['images'] // res['steps']} images; pairs per step {p['pairs'] / res['steps']:g} (pooled), "
        f"{s['pairs'] / res['steps']:g} (sequential); same images in both loops: "
        f"{'yes' if res['same_images'] else 'NO'}. Overrides: `{' '.join(res['overrides']) or '(none)'}`.",
        f"Pooled sync transport: `sync.transport={transport}`, buckets of {res['config']['sync']['bucket_mb']:g} MiB; "
        "the sequential loop's sync is an in-memory copy of every trainable tensor.",
        "",
        "| stage | pooled (Ray) s/step | sequential s/step | pooled speed-up "
        "| pooled best step s | sequential best step s | speed-up, best steps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for st in STAGES:
        lines.append(
            f"| {STAGE_NAMES[st]} | {_f(p['seconds_per_step'][st])} | {_f(s['seconds_per_step'][st])} "
            f"| {_x(q[f'time_{st}'])} | {_f(p['best_seconds'][st])} | {_f(s['best_seconds'][st])} "
            f"| {_x(q[f'best_time_{st}'])} |"
        )
    lines += [
        "",
        "s/step: mean over the measured steps; best step: the fastest measured step of that stage.",
        "",
        "| throughput (over all measured steps) | pooled (Ray) | sequential | pooled speed-up |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "images_generated_per_s": "images generated / s",
        "images_judged_per_s": "images judged / s",
        "pairs_learned_per_s": "pairs learned / s",
        "sync_ms": f"sync ms (pooled: {transport.replace('_', ' ')}; sequential: in-memory copy)",
        "sync_mb": "MB per sync",
        "sync_mb_per_s": "sync MB / s",
        "sync_ms_median": "sync ms, median sync",
        "sync_mb_per_s_median": "sync MB / s, median sync",
        "images_per_s_end_to_end": "images / s, whole step",
    }
    for k, label in labels.items():
        if k == "sync_mb":  # pooled: the changed tensors only; sequential: every trainable one
            same = p["throughput"][k] == s["throughput"][k]
            ratio = "same" if same else "pooled sends changed tensors only"
        else:
            ratio = _x(q.get(k))
        lines.append(f"| {label} | {_f(p['throughput'][k])} | {_f(s['throughput'][k])} | {ratio} |")
    d = p.get("sync_detail") or {}
    if d:
        parts = COMPILED_SYNC_PARTS if transport == "compiled_graph" else SYNC_PARTS
        lines += ["", f"| pooled sync ({transport}), part by part (mean over syncs) | ms |", "|---|---:|"]
        lines += [f"| {label} | {_f(d[k])} |" for k, label in parts.items()]
        compiled = transport == "compiled_graph" and "receiver_peak_extra_mb_all_syncs" in d
        if compiled:  # the channel's pages are first touched in the warm-up's sync
            peak, bucket = d["receiver_peak_extra_mb_all_syncs"], d["largest_bucket_mb_all_syncs"]
            which = "worst sync and worker, the warm-up's included"
        else:
            peak, bucket = d["receiver_peak_extra_mb"], d["largest_bucket_mb"]
            which = "worst sync and worker"
        ratio = None if peak is None or not bucket else peak / bucket
        within = "n/a" if ratio is None else ("yes" if ratio <= 1 + BUCKET_SLACK else "NO")
        lines += [
            "",
            f"Pooled sync: {d['tensors']:g} tensors in {d['buckets']:g} bucket(s) per sync; receivers' peak "
            f"extra memory during a sync {_f(peak)} MiB (kernel peak-RSS mark, {which}), "
            f"largest bucket {_f(bucket)} MiB, ratio {_f(ratio)}: within one bucket (+{BUCKET_SLACK:.0%} for "
            f"64-byte alignment and 4 KiB pages): {within}.",
        ]
        if compiled:
            lines += [
                "",
                f"Compiled graph: a receiver reads every bucket from one shared-memory channel buffer "
                f"({_f(d.get('channel_buffer_mb'))} MiB reserved at compile for the largest message a push "
                "can send), mapped once: the pages a bucket touches become resident in the first sync that "
                f"sends it and stay, so the measured syncs add only {_f(d['receiver_peak_extra_mb'])} MiB "
                "each; the extra memory is one bucket held for the run, not one per sync.",
            ]
    lines += [
        "",
        f"Setup (not timed in the table): pooled {p['setup_s']:.1f} s (Ray start, actors, model loads), "
        f"sequential {s['setup_s']:.1f} s (model loads).",
        "Speed-up > 1: the pooled loop is faster; < 1: slower. The loop is synchronous, so on one "
        "machine the pooled loop cannot run stages in parallel: it pays Ray's calls, serialisation "
        "and object store, and gains only from pools with several workers on free cores. The loops "
        "run interleaved step by step; a load average above the CPU count means other work shared "
        "the cores, and per-step times in the JSON show how much they varied.",
        "",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- the command
def resolve_model(requested: str | None, overrides: list[str]) -> tuple[list[str], str]:
    """(overrides selecting the model, a note saying how it was chosen)."""
    from gapray.config import default_config_dir
    from gapray.models import TOY_CHECKPOINT

    if requested is None:
        name = load_config(overrides).model.name
        note = f"the run's model from config: {name}"
        if name == "toy" and not (TOY_CHECKPOINT / "config.json").is_file():
            raise ConfigError(
                f"the toy checkpoint is missing at {TOY_CHECKPOINT}; train it with `gapray toy pretrain` "
                "or pass --model tiny"
            )
        return [], note
    groups = {p.stem for p in (default_config_dir() / "model").glob("*.yaml")}
    return [f"model={requested}" if requested in groups else f"model.name={requested}"], "--model"


def bench(args: argparse.Namespace) -> dict:
    user = list(args.overrides)
    select, note = resolve_model(args.model, user)
    extra = list(select)
    if load_config([*select, *user]).model.name == "tiny" and not any(o.startswith("pairs") for o in user):
        extra += TINY_DEFAULTS
    if args.prompts_per_step is not None:
        extra.append(f"curriculum.prompts_per_step={args.prompts_per_step}")
    if args.images_per_prompt is not None:
        extra.append(f"generation.images_per_prompt={args.images_per_prompt}")
    overrides = [*extra, *user, "run.progress=false"]
    cfg = load_config(overrides)
    print(
        f"gapray bench loop: model {cfg.model.name} ({note}); overrides: {' '.join(overrides)}",
        file=sys.stderr,
    )
    from gapray.run import _threads

    info = machine()
    warmup = 1
    loops = run_both(cfg, args.steps, warmup)
    pooled, seq = loops["pooled"], loops["sequential"]
    info["load_average_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    same = [r["tokens_sha1"] for r in pooled["rows"]] == [r["tokens_sha1"] for r in seq["rows"]]
    label = Path(cfg.model.name).name or "model"
    return {
        "benchmark": "loop",
        "timestamp": time.strftime("%Y%m%d-%H%M%S"),
        "model": label,
        "model_note": note,
        "steps": args.steps,
        "warmup": warmup,
        "prompts_per_step": cfg.curriculum.prompts_per_step,
        "images_per_prompt": cfg.generation.images_per_prompt,
        "overrides": overrides,
        "sync_transport": resolve_transport(cfg),  # what ran (sync.transport=auto resolved)
        "machine": info,
        "stage_threads": {
            "generation": _threads(cfg, cfg.generation.cpus_per_worker),
            "reward": _threads(cfg, cfg.reward.cpus_per_worker),
            "learner": _threads(cfg, cfg.learner.cpus_per_rank),
        },
        "pooled": pooled,
        "sequential": seq,
        "speedup": ratios(pooled, seq),
        "same_images": same,
        "config": to_dict(cfg),
    }


def write(res: dict, out: Path) -> tuple[Path, Path]:
    return write_results(out, f"loop-{res['model']}-{res['timestamp']}", res, markdown(res))


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gapray bench loop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", help="toy, tiny or a checkpoint directory (default: the run's model)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps, after 1 warm-up step (default 3)")
    ap.add_argument("--prompts-per-step", type=int, help="default: curriculum.prompts_per_step")
    ap.add_argument("--images-per-prompt", type=int, help="default: generation.images_per_prompt")
    ap.add_argument("--out", default="benchmarks/results", help="results folder (default benchmarks/results)")
    ap.add_argument("overrides", nargs="*", help="config overrides, as for `gapray run`")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        res = bench(args)
    except ConfigError as err:
        print(f"gapray bench loop: {err}", file=sys.stderr)
        return 2
    js, md = write(res, Path(args.out))
    print(markdown(res))
    print(f"results: {js} {md}", file=sys.stderr)
    return 0


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _rate(n: float, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _f(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _nice(by_role: dict[str, int] | None) -> str:
    if not by_role:
        return "n/a (not a local Ray)"
    return ", ".join(f"{role} {v}" for role, v in by_role.items())


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"
