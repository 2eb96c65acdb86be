#!/usr/bin/env python3
"""Writes the f16 and bf16 generation goldens of the committed tiny checkpoints.

Reads tests/fixtures/tiny-opt and tiny-t5 as they are (it does not rebuild them) and runs
transformers' generate() in reduced precision, with the precision split that blip2 uses:

  f16:  vision model, language projection and OPT in float16; the Q-Former and the query tokens in
        float32 (transformers' `_keep_in_fp32_modules` for BLIP-2); Flan-T5 in float32.
  bf16: everything in bfloat16 (transformers keeps nothing in f32 there), except Flan-T5, which
        blip2 always runs in float32.

For OPT in f16 and bf16 this is exactly `from_pretrained(dir, dtype=...)`; the script checks that.
For T5 it is transformers' model with the language model converted back to float32.

Output, next to each checkpoint: generation_f16.{json,safetensors}, generation_bf16.{json,safetensors},
in the format of generation.{json,safetensors} (logits and encoder outputs stored as f32).

    python tools/parity/make_half_goldens.py
"""

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, Blip2Config, Blip2ForConditionalGeneration

import make_fixtures as fx

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def load_f32(folder: Path):
    """The checkpoint in float32, from its stored weights. The tiny T5 stores the hub's older
    `q_bias` / `v_bias` vision layout, which transformers 5 no longer loads: fuse it back."""
    single = folder / "model.safetensors"
    if not single.exists() or not any(k.endswith("q_bias") for k in safe_open(str(single), "pt").keys()):
        return Blip2ForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    config = Blip2Config.from_pretrained(str(folder))
    model = Blip2ForConditionalGeneration(config).eval()
    # The checkpoint stores an lm_head of its own (Flan-T5); constructing from the config ties it.
    lm = model.language_model
    lm.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone())
    state = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    for key in [k for k in state if k.endswith("self_attn.q_bias")]:
        prefix = key[: -len("q_bias")]
        q, v = state.pop(prefix + "q_bias"), state.pop(prefix + "v_bias")
        state[prefix + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The T5 lm_head is stored; only tied embeddings may be missing.
    assert not unexpected, unexpected
    assert all("embed_tokens" in k for k in missing), missing
    assert not torch.equal(lm.lm_head.weight, lm.shared.weight), "lm_head must stay separate"
    return model


def check_reproduces_f32_goldens(folder: Path, model, processor, prompts, kwargs, expected):
    """The f32 model as loaded here generates what generation.json (made from the model before it
    was saved) says: the loading above is faithful."""
    image = Image.open(folder.parent / "images" / "rgb_96x64.png")
    inputs = processor(images=[image], text=prompts, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, do_sample=False, **kwargs)[0, 1:].tolist()
    assert ids == expected, (ids, expected)


def in_precision(folder: Path, dtype, t5: bool):
    model = load_f32(folder).to(dtype)
    if dtype == torch.float16:
        model.qformer.float()
        model.query_tokens.data = model.query_tokens.data.float()
    if t5:
        model.language_model.float()
    return model


def check_matches_from_pretrained(folder: Path, model, dtype):
    reference = Blip2ForConditionalGeneration.from_pretrained(str(folder), dtype=dtype)
    ours = dict(model.state_dict())
    for key, t in reference.state_dict().items():
        assert ours[key].dtype == t.dtype and torch.equal(ours[key], t), key


def encoder_outputs(folder: Path, model, dtype):
    """Vision, Q-Former and projection outputs for the pixel values of goldens.safetensors, stored
    as f32 under `encoder.*`."""
    pixel_values = load_file(str(folder / "goldens.safetensors"))["pixel_values"].to(dtype)
    stages = fx.vision_qformer_goldens(model, pixel_values)
    return {f"encoder.{k}": v.float() for k, v in stages.items()}


def first_logits_and_encoder(model, inputs, t5: bool):
    out = {}
    if t5:
        lm = model.language_model
        start = torch.full((inputs["input_ids"].shape[0], 1), lm.config.decoder_start_token_id)
        result = model(**inputs, decoder_input_ids=start)
        out["encoder_last_hidden_state"] = result.language_model_outputs.encoder_last_hidden_state
        out["first_logits"] = result.logits[:, -1, :]
    else:
        out["first_logits"] = model(**inputs).logits[:, -1, :]
    # What the language model reads in place of the image tokens: lets the tests hold the
    # language model alone to these logits, from transformers' own input.
    out["image_features"] = model.get_image_features(inputs["pixel_values"], return_dict=True).pooler_output
    return {k: v.float() for k, v in out.items()}


def write(folder: Path, tag: str, t5: bool):
    dtype = DTYPES[tag]
    processor = AutoProcessor.from_pretrained(str(folder))
    model = in_precision(folder, dtype, t5)
    if t5:
        first = json.loads((folder / "generation.json").read_text())["cases"][0]
        check_reproduces_f32_goldens(folder, load_f32(folder), processor, first["prompts"],
                                     first["generate_kwargs"], first["new_tokens"][0])
    else:
        check_matches_from_pretrained(folder, model, dtype)
    write_cases(folder, tag, t5, model, processor, dtype)


def write_cases(folder: Path, tag: str, t5: bool, model, processor, dtype, extra=None):
    """Runs every generation case of the fixture with `model` (pixel values in `dtype`) and writes
    generation_{tag}.{json,safetensors}; `extra` tensors are saved with them."""
    if t5:
        pad, case_list = 0, fx.T5_GENERATION_CASES
    else:
        pad, case_list = 1, fx.GENERATION_CASES
        processor.tokenizer.padding_side = "left"
    images_dir = folder.parent / "images"
    cases, tensors, min_gap = [], {}, float("inf")
    for name, image_names, prompts, kwargs in case_list:
        imgs = [Image.open(images_dir / f"{n}.png") for n in image_names]
        if prompts is None:
            inputs = processor(images=imgs, return_tensors="pt")
        else:
            inputs = processor(images=imgs, text=prompts, return_tensors="pt", padding=True)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.no_grad():
            generated = model.generate(**inputs, do_sample=False, output_scores=True, output_logits=True,
                                       return_dict_in_generate=True, **kwargs)
            out_ids = generated.sequences
            greedy = kwargs.get("num_beams", 1) == 1
            if greedy:
                # The raw logits of every step, for a teacher-forced comparison of the decoder.
                tensors[f"{name}.step_logits"] = torch.stack([l.float() for l in generated.logits])
            if "input_ids" in inputs:
                for key, t in first_logits_and_encoder(model, inputs, t5).items():
                    tensors[f"{name}.{key}"] = t
                top2 = tensors[f"{name}.first_logits"].topk(2, dim=-1).values
                min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
        if t5:
            prompt_len = 1  # decoder_start_token_id
        elif "input_ids" in inputs:
            prompt_len = inputs["input_ids"].shape[1]
        else:
            prompt_len = fx.NUM_QUERY_TOKENS + 1
        case = fx.case_record(name, image_names, prompts, kwargs, inputs, out_ids, prompt_len, processor, pad)
        # The greedy rows as fed back, pads of finished rows included. Beam search ranks summed
        # scores of beams that start out identical: ties at every step, so no per-step margin is
        # meaningful there.
        case["forced_tokens"] = [row[prompt_len:].tolist() for row in out_ids] if greedy else None
        case["step_margins"] = fx.step_margins(generated.scores) if greedy else None
        cases.append(case)
    tensors.update(encoder_outputs(folder, model, dtype))
    tensors.update(extra or {})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"generation_{tag}.safetensors"))
    meta = {"dtype": tag, "cases": cases, "min_top1_top2_logit_gap_first_step": min_gap, "pad_token_id": pad}
    (folder / f"generation_{tag}.json").write_text(json.dumps(meta, indent=1) + "\n")
    f32 = {c["name"]: c["new_tokens"] for c in json.loads((folder / "generation.json").read_text())["cases"]}
    differ = [c["name"] for c in cases if c["new_tokens"] != f32[c["name"]]]
    print(f"{folder.name} {tag}: {len(cases)} cases, smallest first-step gap {min_gap:.3f}, "
          f"ids differing from f32: {differ or 'none'}")


def main(fixtures: Path = fx.ROOT / "tests" / "fixtures"):
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for tag in DTYPES:
        write(fixtures / "tiny-opt", tag, t5=False)
        write(fixtures / "tiny-t5", tag, t5=True)


if __name__ == "__main__":
    main()
