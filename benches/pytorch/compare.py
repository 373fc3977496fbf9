#!/usr/bin/env python3
"""burn-distill's fused KD/DKD against PyTorch eager, in one run on one machine.

1. Times forward + backward (w.r.t. the student's logits, teacher frozen) of KD and DKD in
   PyTorch eager, f32, at [64,100], [256,100], [256,1000], [1024,1000], with
   torch.set_num_threads(THREADS) (default 1). The loss code is this project's own
   transcription of the reference formulas (mdistiller's kd_loss and dkd_loss: softmax,
   log-softmax, kl_div, the target/other masks and the -1000 masking of DKD's NCKD).
2. Runs `cargo bench --bench floor` and `cargo bench --bench logit` (criterion) and reads
   their medians from target/criterion.
3. Prints the markdown table of docs/performance.md: medians, speed-ups over PyTorch, and
   multiples of the exp floor.

Usage: python3 benches/pytorch/compare.py [--threads 1] [--skip-cargo]
Needs torch (pip install torch); not part of CI.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

SHAPES = [(64, 100), (256, 100), (256, 1000), (1024, 1000)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kd_loss(s, t, temperature):
    log_ps = F.log_softmax(s / temperature, dim=1)
    pt = F.softmax(t / temperature, dim=1)
    return F.kl_div(log_ps, pt, reduction="none").sum(1).mean() * temperature**2


def masks(logits, target):
    gt = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()
    other = torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()
    return gt, other


def cat_mask(p, gt, other):
    return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], dim=1)


def dkd_loss(s, t, target, alpha, beta, temperature):
    gt, other = masks(s, target)
    ps = cat_mask(F.softmax(s / temperature, dim=1), gt, other)
    pt = cat_mask(F.softmax(t / temperature, dim=1), gt, other)
    n = target.shape[0]
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * temperature**2 / n
    pt2 = F.softmax(t / temperature - 1000.0 * gt, dim=1)
    log_ps2 = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ps2, pt2, reduction="sum") * temperature**2 / n
    return alpha * tckd + beta * nckd


def median_seconds(fn, budget=2.0, min_runs=20):
    for _ in range(5):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_medians():
    out = {}
    for n, c in SHAPES:
        g = torch.Generator().manual_seed(0)
        s0 = torch.randn(n, c, generator=g) * 2.0
        t = torch.randn(n, c, generator=g) * 2.0
        y = torch.arange(n) % c

        def kd():
            s = s0.clone().requires_grad_()
            kd_loss(s, t, 4.0).backward()

        def dkd():
            s = s0.clone().requires_grad_()
            dkd_loss(s, t, y, 1.0, 8.0, 4.0).backward()

        out[("kd", n, c)] = median_seconds(kd)
        out[("dkd", n, c)] = median_seconds(dkd)
    return out


def criterion_median(group, name):
    pattern = os.path.join(ROOT, "target", "criterion", group, name, "new", "estimates.json")
    hits = glob.glob(pattern)
    if not hits:
        return None
    with open(hits[0]) as f:
        return json.load(f)["median"]["point_estimate"] * 1e-9


def fmt(sec):
    if sec is None:
        return "–"
    return f"{sec * 1e6:.0f} µs" if sec < 1e-3 else f"{sec * 1e3:.2f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-cargo", action="store_true", help="reuse target/criterion")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_cargo:
        for bench in ["floor", "logit"]:
            subprocess.run(["cargo", "bench", "--bench", bench], cwd=ROOT, check=True)
    pt = torch_medians()
    cols = [f"[{n},{c}]" for n, c in SHAPES]
    print(f"torch {torch.__version__}, {args.threads} thread(s); burn-distill: flex, f32, 1 thread\n")
    print("| | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    floor = [criterion_median("floor_exp of 2·N·C floats", f"vectorised/{n}x{c}") for n, c in SHAPES]
    print("| exp floor (2·N·C vectorised exps) | " + " | ".join(fmt(f) for f in floor) + " |")
    for loss in ["kd", "dkd", "dckd"]:
        rows = {}
        for kind in ["fused", "composed"]:
            rows[kind] = [
                criterion_median(f"forward+backward {n}x{c}", f"{loss}_{kind}") for n, c in SHAPES
            ]
            print(f"| {loss.upper()} {kind} | " + " | ".join(fmt(v) for v in rows[kind]) + " |")
        if loss != "dckd":
            torch_row = [pt[(loss, n, c)] for n, c in SHAPES]
            print(f"| {loss.upper()} PyTorch eager | " + " | ".join(fmt(v) for v in torch_row) + " |")
            ratio = [f"**{p / f:.1f}×**" if f else "–" for p, f in zip(torch_row, rows["fused"])]
            print(f"| {loss.upper()}: PyTorch / fused | " + " | ".join(ratio) + " |")
        mult = [f"{f / fl:.2f}×" if f and fl else "–" for f, fl in zip(rows["fused"], floor)]
        print(f"| {loss.upper()}: fused / floor | " + " | ".join(mult) + " |")
    loop = [criterion_median(f"forward+backward {n}x{c}", "kd_loop") for n, c in SHAPES]
    print("| KD scalar single-pass loop | " + " | ".join(fmt(v) for v in loop) + " |")


if __name__ == "__main__":
    main()
