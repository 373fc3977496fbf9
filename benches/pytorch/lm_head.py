#!/usr/bin/env python3
"""burn-distill's lm-head path (`token::FusedLinear`) against PyTorch and Liger-Kernel, in one run.

1. Runs `cargo bench --bench lm_head` (criterion; its counting allocator prints the peak
   extra heap of one forward + backward) for the sizes and thread counts below and reads the
   medians from target/criterion.
2. Times the same step in PyTorch, f32, each configuration in a child process (so its peak
   resident memory is its own): the student's hidden states [N, 512] and lm-head [32000, 512]
   + bias tracked, the teacher's hidden states and head frozen; forward + backward of
   - "eager": the plain path, both [N, V] logits materialised (`h @ W.T + b`), then the loss
     (forward KL as `kl_div(log_softmax(z_s), log_softmax(z_t), log_target=True)`, summed over
     the vocabulary, mean over tokens; JSD(0.5) as Liger writes it), and
   - "Liger chunked": `liger_kernel.chunked_loss.LigerFusedLinearJSDLoss(compiled=False)`
     (its pure-torch chunked path; beta = 0 is its forward KL, 0.5 its JSD), with
     weight_hard_loss = 0, weight_soft_loss = 1 and its default chunk of 1024 tokens,
   each at torch.set_num_threads(1) and (2). Memory: peak resident set above the one after
   the inputs exist (ru_maxrss), so it includes what the allocator had not returned.
3. Prints the markdown table of docs/performance.md, and ratios at equal thread counts.

Usage: python3 benches/pytorch/lm_head.py [--skip-cargo] [--sizes 2048,8192]
       [--threads 1,2] [--losses forward_kl,jsd] [--big-losses forward_kl] [--big-threads 2]
Sizes above 2048 run only --big-losses at --big-threads (one N = 8192 step of the plain JSD
takes tens of seconds). Needs torch and liger-kernel (`pip install --no-deps liger-kernel`:
the chunked losses are pure torch, Triton is not needed); not part of CI.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, V = 512, 32000

CHILD = r"""
import math, resource, statistics, sys, time
import torch, torch.nn.functional as F
impl, loss, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
H, V = 512, 32000
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
h0 = torch.randn(n, H, generator=g)
w0 = torch.randn(V, H, generator=g) * 0.05
ht = torch.randn(n, H, generator=g)
wt = torch.randn(V, H, generator=g) * 0.05
beta = 0.0 if loss == "forward_kl" else 0.5
labels = torch.randint(0, V, (n,), generator=g)

def divergence(zs, zt):
    ls, lt = F.log_softmax(zs, -1), F.log_softmax(zt, -1)
    if beta == 0.0:
        d = F.kl_div(ls, lt, reduction="none", log_target=True)
    else:
        m = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), 0)
        d = beta * F.kl_div(m, lt, reduction="none", log_target=True) \
            + (1 - beta) * F.kl_div(m, ls, reduction="none", log_target=True)
    return d.sum(-1).mean()

if impl == "liger":
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta,
                                    compiled=False)

def step():
    h = h0.clone().requires_grad_()
    w = w0.clone().requires_grad_()
    b = torch.zeros(V, requires_grad=True)
    if impl == "liger":
        out = liger(h, w, ht, wt, labels, b, None)
    else:
        zs = h @ w.T + b
        with torch.no_grad():
            zt = ht @ wt.T
        out = divergence(zs, zt)
    out.backward()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

base = rss()
step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
runs = 3 if n <= 2048 else 2
times = []
for _ in range(runs):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
print(f"{statistics.median(times)} {peak}")
"""


def torch_run(impl, loss, n, threads):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, impl, loss, str(n), str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def criterion_median(n, threads, loss, path):
    group = f"lm-head N={n} H={H} V={V} threads={threads}"
    pattern = os.path.join(ROOT, "target", "criterion", group, loss, path, "new", "estimates.json")
    hits = glob.glob(pattern)
    if not hits:
        return None
    with open(hits[0]) as f:
        return json.load(f)["median"]["point_estimate"] * 1e-9


def cargo_bench(sizes, losses, threads):
    env = dict(os.environ, LM_HEAD_N=",".join(map(str, sizes)),
               LM_HEAD_LOSSES=",".join(losses), LM_HEAD_THREADS=",".join(map(str, threads)))
    out = subprocess.run(["cargo", "bench", "--bench", "lm_head"], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("memory")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-cargo", action="store_true", help="reuse target/criterion")
    ap.add_argument("--sizes", default="2048,8192")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--losses", default="forward_kl,jsd")
    ap.add_argument("--big-losses", default="forward_kl")
    ap.add_argument("--big-threads", default="2")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    plan = []  # (n, loss, threads)
    for n in sizes:
        small = n <= 2048
        losses = (a.losses if small else a.big_losses).split(",")
        threads = [int(t) for t in (a.threads if small else a.big_threads).split(",")]
        plan += [(n, loss, th) for loss in losses for th in threads]
    memory = []
    if not a.skip_cargo:
        for n in sizes:
            losses = sorted({l for m, l, _ in plan if m == n})
            threads = sorted({t for m, _, t in plan if m == n})
            memory += cargo_bench([n], losses, threads)
    import torch
    print(f"torch {torch.__version__}; burn-distill: flex, f32; {os.cpu_count()} cores\n")
    for line in memory:
        print(line)
    print()
    print("| N, loss, threads | burn-distill fused | unfused (flex) | PyTorch eager | Liger chunked"
          " | eager / fused | Liger / fused | PyTorch eager peak | Liger peak |")
    print("|---" * 9 + "|")
    for n, loss, th in plan:
        fused = criterion_median(n, th, loss, "fused")
        unfused = criterion_median(n, th, loss, "unfused")
        eager, eager_mem = torch_run("eager", loss, n, th)
        liger, liger_mem = torch_run("liger", loss, n, th)
        f = lambda s: "–" if s is None else f"{s:.2f} s"
        r = lambda x: "–" if fused is None else f"**{x / fused:.2f}×**"
        mib = lambda b: f"{b / 2**20:.0f} MiB"
        print(f"| {n}, {loss}, {th} | {f(fused)} | {f(unfused)} | {f(eager)} | {f(liger)} | "
              f"{r(eager)} | {r(liger)} | {mib(eager_mem)} | {mib(liger_mem)} |", flush=True)


if __name__ == "__main__":
    main()
