#!/usr/bin/env python3
"""The sparse-teacher top-k forward KL in PyTorch, eager and torch.compile, beside
`cargo bench --bench logit -- top-k` (burn-distill's TopK, fused and composed).

Forward + backward w.r.t. the student's logits `[1024, 32000]` (f32, sigma = 2) of the forward
KL to a teacher given as its top 64 ids and log-probabilities, the teacher's missing mass (a)
at zero (the teacher renormalised over its top k: DistillKit's `missing_probability_handling
= zero`) and (b) as a tail bucket (both distributions get a (k+1)-th category with their missing
mass: DistillKit's symmetric_uniform, TRL's tail bucket). This project's transcription of those
formulas (log_softmax, gather, log1p(-exp)), T = 1, the mean over tokens; the same ids and
log-probabilities as the Rust bench draws (uniform in [-9, -5]). Prints medians in ms at
torch.set_num_threads(1) and (2).

Usage: python3 benches/pytorch/top_k.py [--no-compile]. Needs torch; not part of CI.
"""

import argparse
import statistics
import time

import torch


def loss(z, ids, lp, bucket):
    ls = torch.log_softmax(z, dim=-1).gather(-1, ids)
    if not bucket:
        lt = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        return (lt.exp() * (lt - ls)).sum(-1).mean()
    eps = 1e-6
    tail = lambda x: torch.log1p(-torch.logsumexp(x, -1, keepdim=True).clamp(max=torch.log1p(torch.tensor(-eps))).exp())
    a = torch.cat([lp, tail(lp)], -1)
    b = torch.cat([ls, tail(ls)], -1)
    return (a.exp() * (a - b)).sum(-1).mean()


def time_it(f, z, ids, lp, bucket, reps=7):
    out = []
    for i in range(reps + 2):
        zz = z.clone().requires_grad_(True)
        t0 = time.perf_counter()
        f(zz, ids, lp, bucket).backward()
        out.append(time.perf_counter() - t0)
    return statistics.median(out[2:]) * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args()
    n, v, k = 1024, 32000, 64
    torch.manual_seed(0)
    z = torch.randn(n, v) * 2.0
    ids = torch.tensor([[((j % k) * 499 + r * 7) % v for j in range(k)] for r in range(n)])
    lp = torch.empty(n, k).uniform_(-9.0, -5.0)
    compiled = None if a.no_compile else torch.compile(loss, dynamic=False)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for bucket in (False, True):
            name = "tail bucket" if bucket else "zero"
            eager = time_it(loss, z, ids, lp, bucket)
            line = f"threads={threads} {name}: eager {eager:.1f} ms"
            if compiled is not None:
                line += f", compiled {time_it(compiled, z, ids, lp, bucket):.1f} ms"
            print(line, flush=True)


if __name__ == "__main__":
    main()
