#!/usr/bin/env python3
"""Writes random-weight BLIP-2 checkpoints at real shapes, in the Hugging Face layout, for the
benchmarks (never committed; several GB for the full shape):

  bench-small   ViT-g width with 6 of its 39 layers, the real Q-Former, an OPT-125m-shaped LM (384M
                parameters)
  opt-2.7b      the shape of Salesforce/blip2-opt-2.7b (3.7B parameters)

Each is saved by transformers' own `save_pretrained` in fp16, sharded like the hub repos, with a
processor and a tokenizer.json whose vocabulary covers every id of the LM (one word-level token per
id), so that both transformers and the Rust crate load it unmodified and can decode any token.

    python tools/bench/make_models.py --out target/bench-models            # both
    python tools/bench/make_models.py --out target/bench-models --only bench-small
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parity"))
from make_fixtures import as_opt_tokenizer  # noqa: E402  (the fixtures' OPT conventions)

VOCAB = 50272  # OPT's embedding rows (the tokenizer's 50265 plus padding to a multiple of 8)
IMAGE_TOKEN = 50265  # `<image>` in the updated hub repos
NEWLINE = 50118  # OPT-based BLIP-2 stops on "\n"
NUM_QUERY_TOKENS = 32

SHAPES = {
    "bench-small": dict(
        vision_layers=6,
        text=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                  word_embed_proj_dim=768),
    ),
    "opt-2.7b": dict(
        vision_layers=39,
        text=dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240,
                  word_embed_proj_dim=2560),
    ),
}


def tokenizer():
    """A word-level tokenizer with one token per LM id; special tokens at OPT's ids."""
    special = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", NEWLINE: "Ċ", IMAGE_TOKEN: "<image>"}
    vocab = {special.get(i, f"w{i}"): i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return as_opt_tokenizer(tok)


def make(name: str, out: Path):
    shape = SHAPES[name]
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": 224, "width": 224}),
        tokenizer=tok,
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN
    processor.save_pretrained(str(out))
    text = dict(shape["text"], vocab_size=VOCAB, max_position_embeddings=2048, bos_token_id=2,
                eos_token_id=NEWLINE, pad_token_id=1, model_type="opt")
    config = Blip2Config(
        vision_config=dict(num_hidden_layers=shape["vision_layers"]),  # ViT-g defaults otherwise
        qformer_config={},  # the real Q-Former: transformers' defaults
        text_config=text,
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=IMAGE_TOKEN,
    )
    torch.manual_seed(0)
    # Built directly in fp16 (as stored on the hub) so the 3.7B shape fits in memory.
    torch.set_default_dtype(torch.float16)
    model = Blip2ForConditionalGeneration(config).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = NEWLINE
    model.generation_config.pad_token_id = 1
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out), max_shard_size="2GB")
    (out / "bench.json").write_text(json.dumps({"shape": name, "parameters": params}) + "\n")
    print(f"{name}: {params / 1e6:.0f}M parameters -> {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("target/bench-models"))
    ap.add_argument("--only", choices=sorted(SHAPES))
    args = ap.parse_args()
    for name in [args.only] if args.only else sorted(SHAPES, key=lambda n: n != "bench-small"):
        make(name, args.out / name)


if __name__ == "__main__":
    main()
