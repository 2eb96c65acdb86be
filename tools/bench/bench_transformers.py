#!/usr/bin/env python3
"""Times transformers (torch, f32, eager attention) on a checkpoint folder written by
make_models.py, measuring the same quantities as the Rust benchmark (`cargo bench --bench
pipeline`), and prints one JSON document:

  load_s              from_pretrained(folder, dtype=float32), first load in the process, with the
                      weight files read once before (page cache warm, as in the Rust harness)
  encode_s            vision model + Q-Former + language projection, one 224x224 image (median)
  caption_s           processor + generate, one image, exactly --tokens new tokens (median)
  prefill_s           the language model over the prompt (32 projected queries + BOS), with cache
  decode_s_per_token  (caption_s - generate with 1 new token) / (tokens - 1)
  batch               {b: {"seconds": s, "images_per_s": b / s}} for each --batches size
  peak_rss_gib        peak resident set size of the process

    python tools/bench/bench_transformers.py target/bench-models/bench-small > ours-vs-theirs/transformers.json
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
import transformers
from transformers import Blip2ForConditionalGeneration, Blip2Processor


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--image", type=Path, default=Path("tests/fixtures/images/rgb_96x64.png"))
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32",
                    help="from_pretrained(dtype=...); the Q-Former stays in f32 under f16, as transformers keeps it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    for f in sorted(args.model.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    start = time.perf_counter()
    model = Blip2ForConditionalGeneration.from_pretrained(
        str(args.model), dtype=dtype, attn_implementation="eager"
    ).eval()
    load_s = time.perf_counter() - start
    processor = Blip2Processor.from_pretrained(str(args.model))
    image = Image.open(args.image).convert("RGB")

    def generate(images, tokens):
        inputs = processor(images=images, return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, num_beams=1,
                              do_sample=False)

    with torch.inference_mode():
        pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"].to(dtype)

        def encode():
            vision = model.vision_model(pixel_values=pixel_values).last_hidden_state
            query = model.query_tokens.expand(1, -1, -1)
            q = model.qformer(query_embeds=query, encoder_hidden_states=vision).last_hidden_state
            return model.language_projection(q.to(vision.dtype))

        encode()  # warm-up
        encode_s = median_time(encode, args.repeat)
        projected = encode()
        bos = model.get_input_embeddings()(torch.tensor([[model.config.text_config.bos_token_id]]))
        embeds = torch.cat([projected, bos], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)

        def prefill():
            return model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=True).logits

        prefill()  # warm-up
        prefill_s = median_time(prefill, args.repeat)
        generate([image], args.tokens)  # warm-up
        out = generate([image], args.tokens)
        prompt_len = model.config.num_query_tokens + 1  # [<image>] * queries + [bos]
        new_tokens = out.shape[1] - prompt_len
        assert new_tokens == args.tokens, (new_tokens, args.tokens)
        one_s = median_time(lambda: generate([image], 1), args.repeat)
        caption_s = median_time(lambda: generate([image], args.tokens), args.repeat)
        batch = {}
        for b in [int(x) for x in args.batches.split(",")]:
            s = median_time(lambda: generate([image] * b, args.tokens), max(1, args.repeat - 1))
            batch[str(b)] = {"seconds": s, "images_per_s": b / s}

    doc = {
        "implementation": "transformers",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "model": str(args.model),
        "threads": args.threads,
        "dtype": args.dtype,
        "tokens": args.tokens,
        "load_s": load_s,
        "encode_s": encode_s,
        "caption_s": caption_s,
        "prefill_s": prefill_s,
        "decode_s_per_token": (caption_s - one_s) / (args.tokens - 1),
        "batch": batch,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    json.dump(doc, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
