#!/usr/bin/env python3
"""Writes the int8 generation goldens of the committed tiny checkpoints.

blip2's int8 mode (`Quantization::Int8`, `--dtype int8`) quantizes every linear layer of the
language model once, at load, to int8 with one f32 scale per output row, and runs everything else
in f32. This script applies the same rule to transformers' model and replaces each weight by its
dequantized value, so transformers computes what blip2 should, up to summation order:

  scale[o] = max_k |W[o][k]| / 127        (f32; a row of zeros gets scale 1)
  q[o][k]  = clamp(round_half_even(W[o][k] / scale[o]), -127, 127)
  W'[o][k] = q[o][k] * scale[o]

Every `nn.Linear` under `language_model` is replaced, the language-modelling head included (OPT's
head is tied to the token embeddings: the head gets the dequantized copy, the embedding table keeps
its values, as in blip2). Output, next to each checkpoint: generation_int8.{json,safetensors} in the
format of generation_f16.*, plus `quantized.<key>.q` (int8) and `.scale` for a few weights, so the
Rust tests can check the quantization itself bit for bit.

    python tools/parity/make_int8_goldens.py
"""

from pathlib import Path

import torch
from transformers import AutoProcessor

import make_fixtures as fx
import make_half_goldens as half

# Weights whose quantized values are stored (language_model-relative module names).
PROBES = {
    "tiny-opt": ["model.decoder.layers.0.fc1", "model.decoder.layers.1.self_attn.q_proj", "lm_head"],
    "tiny-t5": ["encoder.block.0.layer.1.DenseReluDense.wi_0", "decoder.block.0.layer.0.SelfAttention.q",
                "lm_head"],
}


def quantize(w: torch.Tensor):
    """The rule above, on an f32 weight `[out, in]`: (q as int8, scale as f32 `[out]`)."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(w / scale[:, None]).clamp(-127, 127)
    return q.to(torch.int8), scale


def quantize_language_model(model, probes):
    """Replaces every linear weight of the language model by its dequantized value; returns the
    probes' quantized values."""
    stored = {}
    for name, module in model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            q, scale = quantize(module.weight)
            module.weight = torch.nn.Parameter(q.float() * scale[:, None], requires_grad=False)
            if name in probes:
                stored[f"quantized.{name}.q"] = q
                stored[f"quantized.{name}.scale"] = scale
    assert set(probes) == {k[len("quantized."):-len(".q")] for k in stored if k.endswith(".q")}, stored.keys()
    return stored


def write(folder: Path, t5: bool):
    processor = AutoProcessor.from_pretrained(str(folder))
    model = half.load_f32(folder)
    embeddings = model.language_model.get_input_embeddings().weight.detach().clone()
    extra = quantize_language_model(model, PROBES[folder.name])
    # The embedding table is left as it was (OPT's tied head got a copy).
    assert torch.equal(model.language_model.get_input_embeddings().weight, embeddings)
    half.write_cases(folder, "int8", t5, model, processor, torch.float32, extra)


def main(fixtures: Path = fx.ROOT / "tests" / "fixtures"):
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    write(fixtures / "tiny-opt", t5=False)
    write(fixtures / "tiny-t5", t5=True)


if __name__ == "__main__":
    main()
