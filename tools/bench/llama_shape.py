#!/usr/bin/env python3
"""transformers' side of tests/real_shapes.rs `real_vicuna_7b_shape`: Vicuna-7b's LLaMA (or fewer
layers) from random weights in bf16, a prefill of 40 positions (32 image queries + 8 prompt
tokens) fed as embeddings, then 8 greedy decoding steps with the cache; prints the same figures.

    python tools/bench/llama_shape.py --layers 8
"""

import argparse
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    config = LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=args.layers, num_attention_heads=32, max_position_embeddings=2048,
                         rms_norm_eps=1e-6, pad_token_id=0)
    start = time.perf_counter()
    torch.set_default_dtype(dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.02, 0.02)
    built = time.perf_counter() - start
    prompt, steps = 40, 8
    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.arange(100, 100 + prompt).unsqueeze(0))
        cache = DynamicCache(config=config)
        start = time.perf_counter()
        out = model(inputs_embeds=embeds, cache=cache, use_cache=True)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(steps):
            out = model(input_ids=torch.tensor([[200 + i]]), cache=cache, use_cache=True)
        per_token = (time.perf_counter() - start) / steps
    print(f"transformers vicuna-7b shape ({args.layers} layers, {args.dtype}): built in {built:.1f} s, "
          f"prefill of {prompt} positions {prefill:.3f} s, decode {per_token:.4f} s/token "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
