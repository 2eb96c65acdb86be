#!/usr/bin/env python3
"""Writes the tiny InstructBLIP checkpoints and their goldens (run by hand, never in CI):

    python tools/parity/make_instructblip_fixtures.py

It reuses make_fixtures.py's images (run that first, or have tests/fixtures/images/ in place), its
tokenizer recipes and its random init, and writes two folders next to the BLIP-2 fixtures:

  tiny-instructblip-llama/  InstructBlipForConditionalGeneration + LLaMA (Vicuna's architecture:
                            RMSNorm, rotary positions, SiLU-gated MLP, untied lm_head; here with
                            grouped-query attention too), f16, sharded; a SentencePiece-style BPE
                            tokenizer with `<pad>` and `<image>` added after the vocabulary, as in
                            the Vicuna repos, and a pad id in config.json that is not the
                            tokenizer's (the processor pads with the tokenizer's, generate() with
                            the config's)
  tiny-instructblip-t5/     InstructBlipForConditionalGeneration + Flan-T5-style T5, bf16, one file
  each with qformer_tokenizer/ (the BERT WordPiece tokenizer of the Q-Former), goldens.* (vision,
  Q-Former with the instruction, projection) and generation.* (processor inputs, first-step logits,
  generated ids, step margins) in the format of the BLIP-2 fixtures.
"""

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import json
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

import transformers
from transformers import (
    BlipImageProcessorPil,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    LlamaTokenizerFast,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

NUM_QUERY_TOKENS = mf.NUM_QUERY_TOKENS
CAPTION = "A short image caption."
QUESTION = "What is in the picture?"
# The init scale of make_fixtures.randomize: large enough for clear top-1/top-2 margins, small
# enough that transformers' own f32 result stays within 3e-5 of f64 (see generation_goldens).
LLAMA_SCALE = 1.5
T5_SCALE = 1.2


def llama_tokenizer():
    """A byte-fallback BPE over `▁`-joined words like LLaMA's SentencePiece: <unk>=0, <s>=1 (BOS,
    prepended), </s>=2; then `<pad>` added after the vocabulary (Vicuna's 32000)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # Every printable ASCII character is in the vocabulary: transformers 5's LlamaTokenizer rebuilds
    # its pipeline on load without an unknown token (a character outside the vocabulary is dropped,
    # where tokenizer.json says <unk>); real Vicuna falls back to byte tokens instead.
    alphabet = [chr(c) for c in range(33, 127)]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(mf.corpus_lines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"pad_token": "<pad>"})
    fast.padding_side = "left"
    return fast


def save_processor(tokenizer, out: Path):
    image_processor = BlipImageProcessorPil(size={"height": mf.IMAGE_SIZE, "width": mf.IMAGE_SIZE})
    processor = InstructBlipProcessor(
        image_processor=image_processor, tokenizer=tokenizer, qformer_tokenizer=mf.bert_tokenizer(),
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    processor.save_pretrained(str(out))
    # The goldens come from the processor as a user loads it, which must tokenize exactly as the
    # saved tokenizer.json does (what blip2 reads).
    from tokenizers import Tokenizer as RawTokenizer
    from transformers import AutoProcessor

    loaded = AutoProcessor.from_pretrained(str(out))
    raw = RawTokenizer.from_file(str(out / "tokenizer.json"))
    for text in [CAPTION, QUESTION, "a photo of", ""]:
        assert loaded.tokenizer(text)["input_ids"] == raw.encode(text).ids, text
    return loaded


def qformer_config(processor):
    return dict(mf.QFORMER, vocab_size=len(processor.qformer_tokenizer))


def model_goldens(model, processor, images, out: Path):
    """Vision output, the Q-Former's whole output with the instruction (queries then text) and the
    projected queries, for two images with instructions of different lengths (padded)."""
    imgs = [images["rgb_96x64"], images["rgba_64x64"]]
    prompts = [QUESTION, "a photo of"]
    inputs = processor(images=imgs, text=prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        vision = model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
        query = model.query_tokens.expand(len(imgs), -1, -1)
        mask = torch.cat([torch.ones(query.shape[:-1], dtype=torch.long), inputs["qformer_attention_mask"]], dim=1)
        qformer = model.qformer(
            input_ids=inputs["qformer_input_ids"], attention_mask=mask, query_embeds=query,
            encoder_hidden_states=vision,
            encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long),
        ).last_hidden_state
        projection = model.language_projection(qformer[:, :NUM_QUERY_TOKENS, :])
        features = model.get_image_features(
            inputs["pixel_values"], qformer_input_ids=inputs["qformer_input_ids"],
            qformer_attention_mask=inputs["qformer_attention_mask"], return_dict=True,
        ).pooler_output
        assert torch.equal(features, projection), "get_image_features must equal the parts"
    tensors = {"pixel_values": inputs["pixel_values"], "vision_last_hidden_state": vision,
               "qformer_last_hidden_state": qformer, "language_projection": projection}
    meta = {"pixel_values_images": ["images/rgb_96x64.png", "images/rgba_64x64.png"], "prompts": prompts,
            "qformer_input_ids": inputs["qformer_input_ids"].tolist(),
            "qformer_attention_mask": inputs["qformer_attention_mask"].tolist(),
            "image_token_index": model.config.image_token_index,
            "transformers": transformers.__version__, "torch": torch.__version__}
    mf.write_goldens(out, tensors, meta)


CASES = [
    # name, images, prompts, generate() kwargs
    ("caption_greedy", ["rgb_96x64"], [CAPTION], dict(max_new_tokens=12)),
    ("empty_prompt_greedy", ["rgb_96x64"], [""], dict(max_new_tokens=10)),
    ("vqa_greedy", ["rgb_96x64"], [QUESTION], dict(max_new_tokens=10)),
    ("batch_padded", ["rgb_96x64", "rgba_64x64"], ["a photo of", QUESTION], dict(max_new_tokens=8)),
    ("beam3", ["rgb_300x120"], [CAPTION], dict(max_new_tokens=10, num_beams=3)),
    ("beam3_two_returned", ["rgb_96x64"], ["a photo of"], dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)),
    ("penalties_padded", ["rgb_96x64", "grey_70x50"], [CAPTION, QUESTION],
     dict(max_new_tokens=12, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=4)),
    ("lavis_beam5", ["rgb_20x28"], [CAPTION],
     dict(max_new_tokens=9, num_beams=5, repetition_penalty=1.5, length_penalty=1.0)),
]


def first_logits(model, inputs, decoder_only):
    """The first-step logits as generate() computes them, and the image features."""
    lm = model.language_model
    features = model.get_image_features(
        inputs["pixel_values"], qformer_input_ids=inputs["qformer_input_ids"],
        qformer_attention_mask=inputs["qformer_attention_mask"], return_dict=True,
    ).pooler_output
    embeds = prompt_embeds(model, inputs, features)
    if decoder_only:
        # The positions generate() gives the prompt (cumsum of the mask; a plain forward would
        # count padding too).
        attention = inputs["attention_mask"]
        positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
        return lm(inputs_embeds=embeds, attention_mask=attention, position_ids=positions).logits[:, -1, :], features
    start = torch.full((inputs["input_ids"].shape[0], 1), lm.config.decoder_start_token_id)
    return model(**inputs, decoder_input_ids=start).logits[:, -1, :], features


def prompt_embeds(model, inputs, features):
    """The language model's input embeddings with `features` at the image tokens."""
    embeds = model.language_model.get_input_embeddings()(inputs["input_ids"])
    mask = (inputs["input_ids"] == model.config.image_token_index).unsqueeze(-1)
    return embeds.masked_scatter(mask, features.to(embeds.dtype))


def t5_encoder_output(model, inputs, features):
    """The T5 encoder's output over the prompt with `features` at the image tokens."""
    embeds = prompt_embeds(model, inputs, features)
    return model.language_model.encoder(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).last_hidden_state


def generation_goldens(model, processor, images, out: Path, decoder_only: bool, pad: int):
    """generate() for every case: the processor's rows (LM and Q-Former), first-step logits (T5:
    and the encoder output), new tokens, texts and greedy step margins. Also how far transformers'
    own f32 logits are from the same model run in f64 (`reference_f32_error`): the f32 tolerance
    means something only where that is well below it."""
    exact = InstructBlipForConditionalGeneration.from_pretrained(str(out), dtype=torch.float64).eval()
    cases, tensors = [], {}
    min_gap, worst_reference = float("inf"), 0.0
    for name, image_names, prompts, kwargs in CASES:
        imgs = [images[n] for n in image_names]
        inputs = processor(images=imgs, text=prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out_ids = model.generate(**inputs, do_sample=False, **kwargs)
            wide = dict(inputs, pixel_values=inputs["pixel_values"].double())
            exact_logits = first_logits(exact, wide, decoder_only)[0]
            logits, features = first_logits(model, inputs, decoder_only)
            tensors[f"{name}.image_features"] = features
            if not decoder_only:
                tensors[f"{name}.encoder_last_hidden_state"] = t5_encoder_output(model, inputs, features)
            tensors[f"{name}.first_logits"] = logits
            reference_error = float((logits.double() - exact_logits).abs().max())
            worst_reference = max(worst_reference, reference_error)
            top2 = logits.topk(2, dim=-1).values
            min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
            margins = mf.greedy_margins(model, inputs, kwargs)
        prompt_len = inputs["input_ids"].shape[1] if decoder_only else 1
        record = mf.case_record(name, image_names, prompts, kwargs, inputs, out_ids, prompt_len, processor, pad=pad)
        record["qformer_input_ids"] = inputs["qformer_input_ids"].tolist()
        record["qformer_attention_mask"] = inputs["qformer_attention_mask"].tolist()
        cases.append(record | {"step_margins": margins, "reference_f32_error": reference_error})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "generation.safetensors"))
    meta = {"cases": cases, "min_top1_top2_logit_gap_first_step": min_gap, "pad_token_id": pad}
    (out / "generation.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{out.name}: {len(cases)} cases, smallest first-step top-1/top-2 gap {min_gap:.3f}, "
          f"transformers f32 vs f64 at most {worst_reference:.1e}")
    assert worst_reference < 3e-5, "the tiny model is too ill-conditioned for a 1e-4 f32 check"
    for c in cases:
        small = [m for m in (c["step_margins"] or []) if m is not None]
        print(f"  {c['name']}: {c['new_tokens']} min margin {min(small) if small else None}")


def half_goldens(processor, images, out: Path, decoder_only: bool, pad: int):
    """The same cases with the model loaded in f16 and in bf16 (`from_pretrained(dtype=...)`:
    everything in that precision; under f16 transformers keeps the query tokens in f32 and rounds
    them to the Q-Former's precision before use, which is what blip2 computes), with the
    precision split blip2 uses: a T5 language model goes back to f32 (blip2 runs T5 in f32
    whatever the precision; transformers casts the projected queries to the language model's
    dtype, as blip2 does). Writes generation_{f16,bf16}.*, logits and features stored as f32."""
    for tag, dtype in [("f16", torch.float16), ("bf16", torch.bfloat16)]:
        model = InstructBlipForConditionalGeneration.from_pretrained(str(out), dtype=dtype).eval()
        # transformers keeps the query tokens in f32 under f16 only (as for BLIP-2's Q-Former).
        assert model.query_tokens.dtype == (torch.float32 if dtype == torch.float16 else dtype)
        if not decoder_only:
            model.language_model.float()
        cases, tensors = [], {}
        for name, image_names, prompts, kwargs in CASES:
            imgs = [images[n] for n in image_names]
            inputs = processor(images=imgs, text=prompts, return_tensors="pt", padding=True)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            with torch.no_grad():
                out_ids = model.generate(**inputs, do_sample=False, **kwargs)
                logits, features = first_logits(model, inputs, decoder_only)
                tensors[f"{name}.image_features"] = features.float()
                tensors[f"{name}.first_logits"] = logits.float()
                if not decoder_only:
                    enc = t5_encoder_output(model, inputs, features)
                    tensors[f"{name}.encoder_last_hidden_state"] = enc.float()
                margins = mf.greedy_margins(model, inputs, kwargs)
            prompt_len = inputs["input_ids"].shape[1] if decoder_only else 1
            record = mf.case_record(name, image_names, prompts, kwargs, inputs, out_ids, prompt_len,
                                    processor, pad=pad)
            record["qformer_input_ids"] = inputs["qformer_input_ids"].tolist()
            record["qformer_attention_mask"] = inputs["qformer_attention_mask"].tolist()
            cases.append(record | {"step_margins": margins})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"generation_{tag}.safetensors"))
        meta = {"cases": cases, "pad_token_id": pad, "dtype": tag}
        (out / f"generation_{tag}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{out.name} {tag}: " + ", ".join(f"{c['name']} {c['new_tokens']}" for c in cases[:2]))


def make_llama(images, out: Path):
    tokenizer = llama_tokenizer()
    processor = save_processor(tokenizer, out)  # adds <image> after <pad>
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, model_type="llama",
    )
    config = InstructBlipConfig(
        vision_config=mf.VISION, qformer_config=qformer_config(processor), text_config=text,
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=image_token_index,
    )
    torch.manual_seed(3)
    model = mf.randomize(InstructBlipForConditionalGeneration(config).eval(), seed=14, scale=LLAMA_SCALE)
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    mf.stats_line(out.name, model)
    model.half().save_pretrained(str(out), max_shard_size="60KB")
    model = InstructBlipForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    assert not torch.equal(model.language_model.lm_head.weight, model.language_model.model.embed_tokens.weight)
    model_goldens(model, processor, images, out)
    generation_goldens(model, processor, images, out, decoder_only=True, pad=0)
    half_goldens(processor, images, out, decoder_only=True, pad=0)


def make_t5(images, out: Path):
    tokenizer = mf.t5_tokenizer()
    processor = save_processor(tokenizer, out)
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    text = dict(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        dense_act_fn="gelu", tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        model_type="t5",
    )
    config = InstructBlipConfig(
        vision_config=mf.VISION, qformer_config=qformer_config(processor), text_config=text,
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=image_token_index,
    )
    torch.manual_seed(4)
    model = mf.randomize(InstructBlipForConditionalGeneration(config).eval(), seed=15, scale=T5_SCALE)
    lm = model.language_model
    g = torch.Generator().manual_seed(16)
    lm.lm_head.weight = torch.nn.Parameter(torch.randn(lm.lm_head.weight.shape, generator=g) * 2.0 / 32**0.5)
    model.config.text_config.tie_word_embeddings = False
    mf.stats_line(out.name, model)
    model.to(torch.bfloat16).save_pretrained(str(out))
    model = InstructBlipForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    model_goldens(model, processor, images, out)
    generation_goldens(model, processor, images, out, decoder_only=False, pad=0)
    half_goldens(processor, images, out, decoder_only=False, pad=0)


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--half-only", action="store_true",
                        help="only (re)write the f16/bf16 goldens of the existing fixtures")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    fixtures = mf.ROOT / "tests" / "fixtures"
    names = ["rgb_96x64", "rgba_64x64", "rgb_300x120", "grey_70x50", "rgb_20x28"]
    images = {n: Image.open(fixtures / "images" / f"{n}.png") for n in names}
    if args.half_only:
        from transformers import AutoProcessor

        for sub, decoder_only in [("tiny-instructblip-llama", True), ("tiny-instructblip-t5", False)]:
            out = fixtures / sub
            half_goldens(AutoProcessor.from_pretrained(str(out)), images, out, decoder_only=decoder_only, pad=0)
        return
    for sub, make in [("tiny-instructblip-llama", make_llama), ("tiny-instructblip-t5", make_t5)]:
        out = fixtures / sub
        shutil.rmtree(out, ignore_errors=True)
        make(images, out)
    total = sum(f.stat().st_size for sub in ["tiny-instructblip-llama", "tiny-instructblip-t5"]
                for f in (fixtures / sub).rglob("*") if f.is_file())
    print(f"wrote {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
