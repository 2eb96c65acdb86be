#!/usr/bin/env python3
"""Adds `step_margins` to the f32 generation goldens of the committed tiny checkpoints.

generation.json records the ids transformers generated in f32. Where one greedy step chose between
two tokens whose logits were closer than the f32 tolerance (1e-4), any other summation order may
choose the other one, and every later id may differ: those ids are not a property of the model.
This script re-runs each greedy case in f32 (checking it reproduces the stored ids), and stores
the smallest top-1/top-2 gap of every step (`make_fixtures.step_margins`), so the tests compare
ids over the steps transformers' choice was clear. Nothing else in the files changes.
make_fixtures.py records the margins itself when it rebuilds the fixtures.

    python tools/parity/add_step_margins.py
"""

import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor

import make_fixtures as fx
from make_half_goldens import load_f32


def annotate(folder: Path, t5: bool):
    path = folder / "generation.json"
    meta = json.loads(path.read_text())
    processor = AutoProcessor.from_pretrained(str(folder))
    if not t5:
        processor.tokenizer.padding_side = "left"
    model = load_f32(folder)
    for case in meta["cases"]:
        images = [Image.open(folder.parent / name) for name in case["images"]]
        if case["prompts"] is None:
            inputs = processor(images=images, return_tensors="pt")
        else:
            inputs = processor(images=images, text=case["prompts"], return_tensors="pt", padding=True)
        kwargs = case["generate_kwargs"]
        with torch.no_grad():
            ids = inputs["input_ids"].tolist() if "input_ids" in inputs else None
            assert ids == case["input_ids"], case["name"]
            margins = fx.greedy_margins(model, inputs, kwargs)
        case["step_margins"] = margins
        if margins is not None:
            close = [t for t, m in enumerate(margins) if m is not None and m <= 2e-4]
            print(f"{folder.name} {case['name']}: smallest gap {min(m for m in margins if m is not None):.2e}"
                  f"{f', within 2e-4 at steps {close}' if close else ''}")
    path.write_text(json.dumps(meta, indent=1) + "\n")


def main(fixtures: Path = fx.ROOT / "tests" / "fixtures"):
    annotate(fixtures / "tiny-opt", t5=False)
    annotate(fixtures / "tiny-t5", t5=True)


if __name__ == "__main__":
    main()
