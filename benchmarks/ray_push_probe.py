"""Ray's floor for one weight push of the toy run's shape, by call shape (issue 13's sync bench).

The pooled loop's sync moves ~4.2 MB in 47 tensors from the learner actor to two worker actors.
This probe times that move with nothing of gapray's around it (numpy arrays, memcmp/memmove),
so the loop bench's sync figure can be read against what Ray itself costs on this machine:

    A  streaming generator: the manifest alone first, the driver reads it, then the bucket
       (WeightSync before the lead bucket);
    B  one plain actor call returning manifest and bucket as one object, forwarded unread;
    C  streaming generator whose first item is manifest and bucket together, forwarded unread
       (the lead bucket: WeightSync now);
    D  one call with two returns (bucket+manifest, manifest), the bucket forwarded unread;
    E  as C, but the changed tensors are first copied into one flat kept buffer and that one
       array travels (one out-of-band buffer instead of 47; the copy made before the yield);
    R  Ray Direct Transport (`@ray.method(tensor_transport="gloo")`): the 47 torch tensors
       returned, moved to each worker by gloo out of band instead of through the object store;
    R1 as R, one flat tensor;
    P  an empty actor call (the round-trip floor).

    python benchmarks/ray_push_probe.py [--rounds 40]    # writes benchmarks/results/ray-push-probe-<ts>.md
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from pathlib import Path

import numpy as np
import ray
import torch

TENSORS, BYTES = 47, 4_200_000


def _libc():
    c = ctypes.CDLL("libc.so.6")
    for f in (c.memcmp, c.memmove):
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return c


@ray.remote
class Learner:
    def __init__(self):
        self.c = _libc()
        self.p = [np.random.rand(BYTES // TENSORS // 4).astype(np.float32) for _ in range(TENSORS)]
        self.kept = [x.copy() for x in self.p]
        self.offsets = [i * self.p[0].nbytes for i in range(TENSORS)]
        self.flat = np.zeros(BYTES // TENSORS * TENSORS, np.uint8)

    def _step(self):  # an update changes every tensor; the export compares each with its kept copy
        for x in self.p:
            x[:1] += 1
        return (
            "manifest",
            sum(
                self.c.memcmp(a.ctypes.data, b.ctypes.data, a.nbytes) != 0
                for a, b in zip(self.p, self.kept, strict=True)
            ),
        )

    def _keep(self):
        for a, b in zip(self.kept, self.p, strict=True):
            self.c.memmove(a.ctypes.data, b.ctypes.data, a.nbytes)

    def manifest_first(self):
        yield self._step()
        yield [x.view(np.uint8) for x in self.p]
        self._keep()

    def bundle(self):
        out = (self._step(), [x.view(np.uint8) for x in self.p])
        self._keep()
        return out

    def lead_first(self):
        yield (self._step(), [x.view(np.uint8) for x in self.p])
        self._keep()

    def two(self):
        m = self._step()
        out = ((m, [x.view(np.uint8) for x in self.p]), m)
        self._keep()
        return out

    def lead_flat(self):
        m = self._step()
        for x, off in zip(self.p, self.offsets, strict=True):  # the kept copy is the flat buffer
            self.c.memmove(self.flat.ctypes.data + off, x.ctypes.data, x.nbytes)
        yield (m, [self.flat])

    @ray.method(tensor_transport="gloo")
    def rdt(self):
        self._step()
        return [torch.from_numpy(x) for x in self.p]

    @ray.method(tensor_transport="gloo")
    def rdt_flat(self):
        self._step()
        return [torch.from_numpy(self.flat)]

    def ping(self):
        return 1


@ray.remote(enable_tensor_transport=True)  # a receiver of RDT objects needs the transport's thread
class Worker:
    def __init__(self):
        self.c = _libc()
        self.p = [np.zeros(BYTES // TENSORS // 4, np.float32) for _ in range(TENSORS)]

    def apply(self, data, manifest=None):
        if isinstance(data, tuple):
            _manifest, data = data
        data = [d.numpy() if isinstance(d, torch.Tensor) else d for d in data]
        if len(data) == 1:  # one flat buffer: each tensor a slice of it
            flat, off = data[0], 0
            for a in self.p:
                self.c.memmove(a.ctypes.data, flat.ctypes.data + off, a.nbytes)
                off += a.nbytes
            return 1
        for a, b in zip(self.p, data, strict=True):
            self.c.memmove(a.ctypes.data, b.ctypes.data, a.nbytes)
        return 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    from ray.experimental.collective import create_collective_group

    learner, workers = Learner.remote(), [Worker.remote() for _ in range(2)]
    ray.get(learner.ping.remote())
    create_collective_group([learner, *workers], backend="torch_gloo")  # for R and R1 only
    ray.get([w.apply.remote([np.zeros(BYTES // TENSORS // 4 * 4, np.uint8)] * TENSORS) for w in workers])

    def to_workers(ref, manifest=None):  # every worker applies the bucket; wait for all
        ray.get([w.apply.remote(ref, manifest) for w in workers])

    def a():
        s = learner.manifest_first.options(num_returns="streaming").remote()
        m = ray.get(next(s))
        to_workers(next(s), m)
        list(s)

    def b():
        to_workers(learner.bundle.remote())

    def c():
        s = learner.lead_first.options(num_returns="streaming").remote()
        to_workers(next(s))
        list(s)

    def d():
        lead, m = learner.two.options(num_returns=2).remote()
        calls = [w.apply.remote(lead) for w in workers]
        ray.get(m)
        ray.get(calls)

    def e():
        s = learner.lead_flat.options(num_returns="streaming").remote()
        to_workers(next(s))
        list(s)

    def r():
        to_workers(learner.rdt.remote())

    def r1():
        to_workers(learner.rdt_flat.remote())

    def p():
        ray.get(learner.ping.remote())

    shapes = {
        "A manifest first": a,
        "B one object, plain call": b,
        "C lead bucket (streamed)": c,
        "D two returns": d,
        "E lead bucket, one flat array": e,
        "R direct transport (gloo), 47 tensors": r,
        "R1 direct transport (gloo), one flat tensor": r1,
        "P empty call": p,
    }
    times = {k: [] for k in shapes}
    for i in range(args.rounds):
        for k, f in shapes.items():  # interleaved, so drifting load hits every shape alike
            t = time.perf_counter()
            f()
            if i >= 5:
                times[k].append(1000 * (time.perf_counter() - t))

    load = os.getloadavg()[0]
    lines = [
        f"## Ray push probe: {BYTES / 1e6:.1f} MB in {TENSORS} arrays to 2 actors, {args.rounds - 5} rounds after 5 warm-up",
        "",
        f"Load average at the end {load:.2f}; ray {ray.__version__}.",
        "",
        "| call shape | median ms | mean ms | min ms |",
        "|---|---:|---:|---:|",
    ]
    for k, v in times.items():
        lines.append(f"| {k} | {statistics.median(v):.2f} | {statistics.mean(v):.2f} | {min(v):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ray-push-probe-{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
