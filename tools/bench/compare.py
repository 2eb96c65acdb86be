#!/usr/bin/env python3
"""Prints the side-by-side table of docs/performance.md from two benchmark documents:

    python tools/bench/compare.py target/bench-results/rust-bench-small.json \\
        target/bench-results/transformers-bench-small.json

The ratio is ours / transformers for times and memory, and transformers / ours for throughput, so
below 1 always means the Rust crate is better.
"""

import json
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ours, theirs = (json.load(open(p)) for p in sys.argv[1:])
    rows = [
        (f"load (fp16 files → {ours.get('dtype', 'f32')})", "load_s", "s"),
        ("encode 1 image (vision + Q-Former + projection)", "encode_s", "s"),
        ("prefill (32 queries + BOS)", "prefill_s", "s"),
        ("decode per token, batch 1", "decode_s_per_token", "s"),
        (f"caption 1 image, {ours['tokens']} tokens", "caption_s", "s"),
    ]
    print("| metric | blip2 (Rust) | transformers | ratio |")
    print("|---|---|---|---|")
    for label, key, unit in rows:
        a, b = ours[key], theirs[key]
        print(f"| {label} | {a:.3f} {unit} | {b:.3f} {unit} | {a / b:.2f}× |")
    for batch in ours["batch"]:
        a, b = ours["batch"][batch]["images_per_s"], theirs["batch"][batch]["images_per_s"]
        print(f"| batch {batch}: captions/s | {a:.3g} | {b:.3g} | {b / a:.2f}× |")
    first = min(ours["batch"], key=int)
    last = max(ours["batch"], key=int)
    for name, doc in (("blip2", ours), ("transformers", theirs)):
        gain = doc["batch"][last]["images_per_s"] / doc["batch"][first]["images_per_s"]
        print(f"| {name}: batch {last} ÷ batch {first} captions/s | {gain:.2f}× | | |")
    a, b = ours["peak_rss_gib"], theirs["peak_rss_gib"]
    print(f"| peak RSS | {a:.2f} GiB | {b:.2f} GiB | {a / b:.2f}× |")


if __name__ == "__main__":
    main()
