#!/usr/bin/env python3
"""transformers' side of tests/real_shapes.rs `real_vicuna_7b_shape`, from random weights in bf16:
the image side of InstructBLIP (ViT-g, the Q-Former over 32 queries and a 10-token instruction,
the projection to 4096) for one 224x224 image; then Vicuna-7b's LLaMA (or fewer layers): a prefill
of 40 positions (32 image queries + 8 prompt tokens) fed as embeddings, then 8 decoding steps with
the cache. Prints the same figures.

    python tools/bench/llama_shape.py --layers 8
"""

import argparse
import time

import torch
from transformers import (
    DynamicCache,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    InstructBlipVisionConfig,
    InstructBlipVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)


def random_(module):
    """Uniform in [-0.02, 0.02] like blip2's RandomWeights (torch's init is slow at this size)."""
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.02, 0.02)
    return module.eval()


def encode_time():
    vision = random_(InstructBlipVisionModel(InstructBlipVisionConfig()))
    qformer = random_(InstructBlipQFormerModel(InstructBlipQFormerConfig()))
    projection = random_(torch.nn.Linear(768, 4096))
    query_tokens = torch.empty(1, 32, 768).uniform_(-0.02, 0.02)
    pixels = torch.randn(1, 3, 224, 224)
    ids = torch.arange(1000, 1010).unsqueeze(0)
    with torch.no_grad():
        start = time.perf_counter()
        states = vision(pixel_values=pixels).last_hidden_state
        out = qformer(input_ids=ids, attention_mask=torch.ones(1, 42, dtype=torch.long), query_embeds=query_tokens,
                      encoder_hidden_states=states,
                      encoder_attention_mask=torch.ones(states.shape[:-1], dtype=torch.long)).last_hidden_state
        projected = projection(out[:, :32, :])
        elapsed = time.perf_counter() - start
    assert projected.shape == (1, 32, 4096)
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    config = LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=args.layers, num_attention_heads=32, max_position_embeddings=2048,
                         rms_norm_eps=1e-6, pad_token_id=0)
    torch.set_default_dtype(dtype)
    encoded = encode_time()
    start = time.perf_counter()
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
    print(f"transformers vicuna-7b shape ({args.layers} layers, {args.dtype}): image encoded in {encoded:.2f} s; "
          f"LM built in {built:.1f} s, "
          f"prefill of {prompt} positions {prefill:.3f} s, decode {per_token:.4f} s/token "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
