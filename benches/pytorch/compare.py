#!/usr/bin/env python3
"""burn-distill's fused KD/DKD against PyTorch eager and torch.compile, in one run on one machine.

1. Runs `cargo bench --bench floor` and `cargo bench --bench logit` (criterion) and reads
   their medians from target/criterion: the fused kernels on one thread (`*/fused-1thread`)
   and on every core (`*/fused`), the composed versions, the exp floor.
2. Times forward + backward (w.r.t. the student's logits, teacher frozen) of KD and DKD in
   PyTorch, f32, at [64,100], [256,100], [256,1000], [1024,1000]: eager, and compiled with
   `torch.compile` (inductor: fused vectorised C++ loops, OpenMP), each with
   torch.set_num_threads(1) and (2) — the strongest CPU baseline. The loss code is this
   project's own transcription of the reference formulas (mdistiller's kd_loss and dkd_loss:
   softmax, log-softmax, kl_div, the target/other masks and the -1000 masking of DKD's NCKD).
3. Prints the markdown tables of docs/performance.md: medians, and the ratios PyTorch / fused
   at equal thread counts.

Usage: python3 benches/pytorch/compare.py [--skip-cargo] [--no-compile] [--features wgpu]
Needs torch (pip install torch) and a C++ compiler for inductor; not part of CI.
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


def torch_medians(threads, compiled):
    torch.set_num_threads(threads)
    kd_fn = torch.compile(kd_loss, dynamic=False) if compiled else kd_loss
    dkd_fn = torch.compile(dkd_loss, dynamic=False) if compiled else dkd_loss
    out = {}
    for n, c in SHAPES:
        g = torch.Generator().manual_seed(0)
        s0 = torch.randn(n, c, generator=g) * 2.0
        t = torch.randn(n, c, generator=g) * 2.0
        y = torch.arange(n) % c

        def kd():
            s = s0.clone().requires_grad_()
            kd_fn(s, t, 4.0).backward()

        def dkd():
            s = s0.clone().requires_grad_()
            dkd_fn(s, t, y, 1.0, 8.0, 4.0).backward()

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
    ap.add_argument("--skip-cargo", action="store_true", help="reuse target/criterion")
    ap.add_argument("--no-compile", action="store_true", help="eager PyTorch only")
    ap.add_argument("--features", default="", help="cargo features for the benches (wgpu adds its rows)")
    args = ap.parse_args()
    if not args.skip_cargo:
        features = ["--features", args.features] if args.features else []
        for bench in ["floor", "logit"]:
            subprocess.run(["cargo", "bench", *features, "--bench", bench], cwd=ROOT, check=True)
    threads = [1, 2]
    modes = ["eager"] + ([] if args.no_compile else ["compiled"])
    pt = {(m, th): torch_medians(th, m == "compiled") for m in modes for th in threads}
    cols = [f"[{n},{c}]" for n, c in SHAPES]
    cores = os.cpu_count()
    print(f"torch {torch.__version__}; burn-distill: flex, f32; {cores} cores\n")
    print("| | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    floor = [criterion_median("floor_exp of 2·N·C floats", f"vectorised/{n}x{c}") for n, c in SHAPES]
    print("| exp floor, 1 thread (2·N·C vectorised exps) | " + " | ".join(fmt(f) for f in floor) + " |")
    for loss in ["kd", "dkd", "dckd"]:
        fused = {
            1: [criterion_median(f"forward+backward {n}x{c}", f"{loss}_fused-1thread") for n, c in SHAPES],
            2: [criterion_median(f"forward+backward {n}x{c}", f"{loss}_fused") for n, c in SHAPES],
        }
        composed = [criterion_median(f"forward+backward {n}x{c}", f"{loss}_composed") for n, c in SHAPES]
        for th in threads:
            print(f"| {loss.upper()} fused, {th} thread(s) | " + " | ".join(fmt(v) for v in fused[th]) + " |")
        print(f"| {loss.upper()} composed | " + " | ".join(fmt(v) for v in composed) + " |")
        if loss == "dckd":
            continue
        for m in modes:
            for th in threads:
                row = [pt[(m, th)][(loss, n, c)] for n, c in SHAPES]
                print(f"| {loss.upper()} PyTorch {m}, {th} thread(s) | " + " | ".join(fmt(v) for v in row) + " |")
        for m in modes:
            for th in threads:
                ratio = [
                    f"**{pt[(m, th)][(loss, n, c)] / f:.1f}×**" if f else "–"
                    for (n, c), f in zip(SHAPES, fused[th])
                ]
                print(f"| {loss.upper()}: PyTorch {m} / fused, {th} thread(s) | " + " | ".join(ratio) + " |")
        scale = [f"{a / b:.2f}×" if a and b else "–" for a, b in zip(fused[1], fused[2])]
        print(f"| {loss.upper()} fused: 1 thread / 2 threads | " + " | ".join(scale) + " |")
    # with --features wgpu: the CubeCL kernels against the composed ops on the same adapter
    wgpu = [(n, c) for n, c in SHAPES if criterion_median(f"wgpu forward+backward {n}x{c}", "kd_fused")]
    if wgpu:
        print("\n| wgpu | " + " | ".join(f"[{n},{c}]" for n, c in wgpu) + " |")
        print("|---" * (len(wgpu) + 1) + "|")
        for loss in ["kd", "dkd"]:
            med = {
                kind: [criterion_median(f"wgpu forward+backward {n}x{c}", f"{loss}_{kind}") for n, c in wgpu]
                for kind in ["fused", "composed"]
            }
            for kind in ["fused", "composed"]:
                print(f"| {loss.upper()} {kind} | " + " | ".join(fmt(v) for v in med[kind]) + " |")
            ratio = [f"**{c / f:.1f}×**" for f, c in zip(med["fused"], med["composed"])]
            print(f"| {loss.upper()}: composed / fused | " + " | ".join(ratio) + " |")


if __name__ == "__main__":
    main()
