"""SmolLM2-135M with Hugging Face transformers: the reference the Rust teacher is checked against,
and its speed on this machine. Not run in CI.

    python -m venv venv && venv/bin/pip install torch transformers gguf accelerate
    venv/bin/python benches/pytorch/smollm2.py score --gguf G --text T --out ref.json
    venv/bin/python benches/pytorch/smollm2.py compare ref.json burn.json
    venv/bin/python benches/pytorch/smollm2.py speed --gguf G --threads 2

`score` writes the JSON the Rust example writes (ids without BOS, the arg-max at every position,
the log-probability of every next token, their mean NLL, the full logit rows at positions 0-3).
The model is transformers' own GGUF loading (dequantised to float32, q/k rows un-permuted by
transformers). The tokenizer is NOT transformers' GGUF tokenizer, which has no rule for the
file's `pre = smollm` and keeps a space before a non-ASCII numeral in one pre-token: it is a
`tokenizers` byte-level BPE built from the file's vocabulary and merges with llama.cpp's
`smollm` pre-tokenizer (Digits(individual) then ByteLevel), control tokens special.
"""

import argparse
import json
import math
import sys
import time


def load_tokenizer(path):
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(path)

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    kinds = reader.fields["tokenizer.ggml.token_type"]
    kinds = [int(kinds.parts[i][0]) for i in kinds.data]
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, k in zip(tokens, kinds) if k == 3])
    return tok


def load_model(path, threads):
    import os

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    folder, name = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval()


def score(args):
    import torch

    tok = load_tokenizer(args.gguf)
    text = open(args.text, encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=False) == text, "decode does not round-trip"
    model = load_model(args.gguf, args.threads)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits.double(), dim=-1)
    nxt = logp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    out = {
        "ids": ids,
        "top1": logits.argmax(-1).tolist(),
        "next_token_logprob": nxt.tolist(),
        "mean_nll": float(-nxt.mean()) if len(ids) > 1 else 0.0,
        "logits": logits[:4].tolist(),
    }
    json.dump(out, open(args.out, "w"))
    print(f"{len(ids)} tokens, mean NLL {out['mean_nll']:.6f} -> {args.out}")


def compare(args):
    a, b = json.load(open(args.reference)), json.load(open(args.candidate))
    ok = True

    def check(name, good, detail):
        nonlocal ok
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name}: {detail}")

    check("ids", a["ids"] == b["ids"], f"{len(a['ids'])} vs {len(b['ids'])} tokens")
    if a["ids"] != b["ids"]:
        sys.exit(1)
    diff = max(
        abs(x - y) for ra, rb in zip(a["logits"], b["logits"]) for x, y in zip(ra, rb)
    )
    check("logits rows 0-3", diff <= 2e-3, f"max |diff| {diff:.2e} (tolerance 2e-3)")
    lp = max((abs(x - y) for x, y in zip(a["next_token_logprob"], b["next_token_logprob"])), default=0.0)
    check("next-token log-probs", lp <= 1e-3, f"max |diff| {lp:.2e} (tolerance 1e-3)")
    nll = abs(a["mean_nll"] - b["mean_nll"])
    check("mean NLL", nll <= 1e-4, f"|diff| {nll:.2e} (tolerance 1e-4)")
    top = sum(x != y for x, y in zip(a["top1"], b["top1"]))
    check("arg-max", top == 0, f"{top} of {len(a['top1'])} positions differ")
    sys.exit(0 if ok else 1)


def speed(args):
    import torch

    model = load_model(args.gguf, args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = {}
    for batch, length in [(4, 256), (1, 1024)]:
        ids = torch.randint(17, 49152, (batch, length), generator=gen)
        with torch.no_grad():
            model(ids[:, :16])  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                model(ids)
                times.append(time.perf_counter() - start)
        times.sort()
        median = times[len(times) // 2]
        rows[f"{batch}x{length}"] = batch * length / median
        print(f"transformers float32, {args.threads} threads, {batch} x {length}: "
              f"median {median:.3f} s, {batch * length / median:.0f} tokens/s")
    if args.out:
        json.dump(rows, open(args.out, "w"))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score")
    s.add_argument("--gguf", required=True)
    s.add_argument("--text", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("reference")
    c.add_argument("candidate")
    v = sub.add_parser("speed")
    v.add_argument("--gguf", required=True)
    v.add_argument("--threads", type=int, default=2)
    v.add_argument("--repeats", type=int, default=3)
    v.add_argument("--out")
    args = p.parse_args()
    {"score": score, "compare": compare, "speed": speed}[args.cmd](args)


if __name__ == "__main__":
    main()
