#!/usr/bin/env python3
"""Writes the tiny reference checkpoints and golden outputs the Rust tests compare against.

Everything is built with transformers' own classes and saved with `save_pretrained`, so key names,
sharding, dtypes and processor files have exactly the layout of the real `Salesforce/blip2-*` repos.
The output goes to `tests/fixtures/` (committed; a few hundred KB). Run it by hand, never in CI:

    pip install -r tools/parity/requirements.txt   # no torchvision: transformers must use PIL

Pillow is pinned below 13: Pillow 13 runs the vertical resampling pass first for some size pairs
(Pillow <= 12 always runs the horizontal pass first), which moves some pixels by one level. The Rust
preprocessing reproduces Pillow <= 12; see docs/parity.md.
    python tools/parity/make_fixtures.py

Fixtures:
  images/            small PNGs: RGB (down- and up-scaled, non-square), RGBA, grey, grey+alpha,
                     palette with transparency
  preprocess/        pixel_values.safetensors: BlipImageProcessor (PIL backend) output for every
                     image at two output sizes; cases.json lists them
  tiny-opt/          Blip2ForConditionalGeneration + OPT, fp16, sharded (index + 3+ shards),
                     transformers 5 processor layout (image processor nested in
                     processor_config.json), fused `qkv.bias`
  tiny-t5/           Blip2ForConditionalGeneration + Flan-T5-style T5 (gated-gelu, untied lm_head),
                     bf16, single file, hub processor layout (preprocessor_config.json), and the
                     older `q_bias` / `v_bias` attention layout of the real hub repos
  tiny-itm/          Blip2ForImageTextRetrieval, f32, single file, BERT WordPiece tokenizer
  */goldens.safetensors + goldens.json: reference outputs computed in f32 from the weights as
                     stored (so fp16/bf16 rounding of the weights is part of the reference)
  */generation_{f16,bf16}.*: the same generation cases run in f16 and bf16
                     (make_half_goldens.py, also run by this script)
"""

import os

# The tokenizer trainers are parallel, and their results depend on thread scheduling; one thread
# makes the fixtures reproducible.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders

import transformers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    BlipImageProcessorPil,
    BertTokenizerFast,
    GPT2TokenizerFast,
    T5TokenizerFast,
)

ROOT = Path(__file__).resolve().parents[2]
NUM_QUERY_TOKENS = 8
IMAGE_SIZE = 32
PREPROCESS_SIZES = [(IMAGE_SIZE, IMAGE_SIZE), (40, 56)]

CORPUS = [
    "a photo of a cat sitting on a red couch",
    "a dog running on the beach at sunset",
    "two people riding bicycles down a city street",
    "a plate of food with rice and vegetables",
    "a man holding an umbrella in the rain",
    "a bowl of fruit on a wooden table",
    "a train stopped at a station",
    "a little girl flying a kite in a park",
    "a bird perched on a branch of a tree",
    "a group of sheep grazing in a green field",
    "Question: what is in the picture? Answer:",
    "Question: how many animals are there? Answer: two",
    "Question: what color is the car? Answer: blue",
    "Question: where is the cat? Answer: on the couch",
    "an orange and white cat looking out of a window",
    "a red car parked next to a blue house",
    "the sky is blue and the grass is green",
    "a close up of a pizza with cheese and tomato",
    "a woman in a white shirt playing tennis",
    "a boat floating on a calm lake near the mountains",
]


def corpus_lines():
    # Repeat with variations so the BPE/unigram trainers see every pair a few times.
    lines = []
    for i in range(4):
        for line in CORPUS:
            lines.append(line if i % 2 == 0 else line.capitalize() + ".")
    return lines


# ----------------------------------------------------------------------------------------------
# images and preprocessing goldens
# ----------------------------------------------------------------------------------------------


def scene(width, height, seed):
    """A deterministic picture: gradients, shapes and mild noise (compresses well as PNG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = (255 * x / max(width - 1, 1)).astype(np.float64)
    g = (255 * y / max(height - 1, 1)).astype(np.float64)
    b = 128 + 100 * np.sin((x + 2 * y) / 7.0)
    img = np.stack([r, g, b], axis=-1)
    img += rng.normal(0, 6, img.shape)
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(2, max(3, width // 2))), y0 + int(rng.integers(2, max(3, height // 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x0, y0, x1, y1], fill=color) if rng.random() < 0.5 else draw.rectangle([x0, y0, x1, y1], fill=color)
    return img


def make_images(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    images["rgb_96x64"] = scene(96, 64, 1)
    images["rgb_300x120"] = scene(300, 120, 2)
    images["rgb_20x28"] = scene(20, 28, 3)
    rgba = scene(64, 64, 4).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    alpha[:8, :] = 0
    alpha[-8:, :] = 255
    rgba.putalpha(Image.fromarray(alpha, "L"))
    images["rgba_64x64"] = rgba
    images["grey_70x50"] = scene(70, 50, 5).convert("L")
    la = scene(33, 33, 6).convert("LA")
    la.putalpha(Image.fromarray(np.tile(np.linspace(30, 250, 33).astype(np.uint8), (33, 1)).T.copy(), "L"))
    images["grey_alpha_33x33"] = la
    pal = scene(48, 48, 7).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 3
    images["palette_48x48"] = pal
    for name, img in images.items():
        kwargs = {"transparency": 3} if img.mode == "P" else {}
        img.save(out / f"{name}.png", **kwargs)
    # Reload from disk so the goldens see exactly what the Rust side decodes.
    return {name: Image.open(out / f"{name}.png") for name in images}


RESIZE_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def make_resize_goldens(images_dir: Path, out: Path):
    """Pillow's own resize of a noise image (worst case for rounding) to many sizes: down, up,
    mixed, one axis only, with every convolution filter; and one 224x224 bicubic (the real size)."""
    rng = np.random.default_rng(42)
    noise = Image.fromarray(rng.integers(0, 256, (47, 61, 3)).astype(np.uint8), "RGB")
    noise.save(images_dir / "noise_61x47.png")
    noise = Image.open(images_dir / "noise_61x47.png")
    sizes = [(int(w), int(h)) for w, h in rng.integers(5, 90, (24, 2))]
    sizes += [(61, 20), (30, 47), (122, 94), (7, 200), (61, 47)]
    tensors, cases = {}, []
    for w, h in sizes:
        for name, flt in RESIZE_FILTERS.items():
            if name != "bicubic" and (w, h) not in sizes[:4]:
                continue
            key = f"{name}@{w}x{h}"
            tensors[key] = torch.from_numpy(np.array(noise.resize((w, h), flt))).contiguous()
            cases.append({"key": key, "filter": name, "width": w, "height": h})
    photo = Image.open(images_dir / "rgb_300x120.png").convert("RGB")
    tensors["photo@224x224"] = torch.from_numpy(np.array(photo.resize((224, 224), Image.Resampling.BICUBIC)))
    save_file(tensors, str(out / "resized.safetensors"))
    (out / "resize_cases.json").write_text(json.dumps(cases, indent=1) + "\n")


def make_preprocess_goldens(images, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    make_resize_goldens(out.parent / "images", out)
    tensors, cases = {}, []
    for h, w in PREPROCESS_SIZES:
        proc = BlipImageProcessorPil(size={"height": h, "width": w})
        for name, img in images.items():
            pv = proc(images=img, return_tensors="pt")["pixel_values"]
            key = f"{name}@{h}x{w}"
            tensors[key] = pv[0].contiguous().float()
            cases.append({"key": key, "image": f"images/{name}.png", "height": h, "width": w, "mode": img.mode})
    save_file(tensors, str(out / "pixel_values.safetensors"))
    (out / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------


def opt_tokenizer():
    """A byte-level BPE like OPT's GPT-2 tokenizer: <s>=0, <pad>=1, </s>=2 (BOS, prepended), <unk>=3."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines() + ["line one\nline two\n"], trainer)
    return as_opt_tokenizer(tok)


def as_opt_tokenizer(tok):
    """OPT's conventions on a `tokenizers.Tokenizer` whose `</s>` is id 2: `</s>` prepended as BOS,
    `<pad>` padding on the left, wrapped as transformers' GPT2TokenizerFast."""
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", 2)]
    )
    fast = GPT2TokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.padding_side = "left"
    return fast


def t5_tokenizer():
    """A unigram tokenizer like T5's SentencePiece: <pad>=0, </s>=1 (appended), <unk>=2."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def bert_tokenizer():
    """An uncased WordPiece like BERT's, plus BLIP-2's [DEC] token."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=True)
    fast.add_special_tokens({"bos_token": "[DEC]"})
    return fast


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------

VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=IMAGE_SIZE, patch_size=8,
)
QFORMER = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
    max_position_embeddings=32, cross_attention_frequency=2,
)


def randomize(model, seed, scale):
    """Replaces transformers' init (near-zero for the tiny sizes) by N(0, scale) weights, LayerNorm
    weights near 1 and small biases, so activations and logits are far from ties."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name.lower() or name.endswith("layer_norm.weight")) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if p.ndim >= 2 else 1
                p.copy_(torch.randn(p.shape, generator=g) * scale / max(fan_in, 1) ** 0.5)
            if name.endswith("self_attn.qkv.bias"):
                # EVA-CLIP has q and v biases only: the fused bias's k third is zero.
                p[p.shape[0] // 3 : 2 * p.shape[0] // 3] = 0.0
    return model


def save_processor(tokenizer, out: Path):
    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    processor.save_pretrained(str(out))
    return processor


def to_hub_processor_layout(out: Path):
    """Rewrites transformers 5's processor_config.json (image processor nested) into the layout of
    the updated hub repos: preprocessor_config.json + a small processor_config.json."""
    cfg = json.loads((out / "processor_config.json").read_text())
    image_processor = cfg.pop("image_processor")
    image_processor["processor_class"] = "Blip2Processor"
    (out / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2, sort_keys=True) + "\n")
    small = {"num_query_tokens": cfg["num_query_tokens"], "processor_class": "Blip2Processor"}
    (out / "processor_config.json").write_text(json.dumps(small, indent=2) + "\n")


def split_qkv_bias(out: Path, file="model.safetensors"):
    """Rewrites every vision `self_attn.qkv.bias` as `q_bias` + `v_bias`, as in the real hub repos."""
    path = out / file
    tensors = load_file(str(path))
    rewritten = {}
    for key, t in tensors.items():
        if key.endswith("self_attn.qkv.bias"):
            q, k, v = t.chunk(3)
            assert torch.count_nonzero(k) == 0, "the k third of the fused bias must be zero"
            prefix = key[: -len("qkv.bias")]
            rewritten[prefix + "q_bias"] = q.clone()
            rewritten[prefix + "v_bias"] = v.clone()
        else:
            rewritten[key] = t
    save_file(rewritten, str(path), metadata={"format": "pt"})


PROBE_KEYS = [
    "vision_model.embeddings.class_embedding",
    "vision_model.encoder.layers.1.self_attn.qkv.weight",
    "vision_model.encoder.layers.0.self_attn.q_bias",
    "vision_model.encoder.layers.0.self_attn.v_bias",
    "vision_model.encoder.layers.0.self_attn.qkv.bias",
    "qformer.encoder.layer.2.crossattention.attention.key.weight",
    "query_tokens",
    "language_model.model.decoder.embed_tokens.weight",
    "language_model.lm_head.weight",
    "language_model.shared.weight",
    "itm_head.weight",
]


def weight_probes(out: Path):
    """A few stored tensors as f32 (dtype, shape, first values, sum), read back from the files
    exactly as saved, so the Rust loader's dtype conversion can be checked against torch's."""
    tensors, dtypes = {}, {}
    for f in sorted(out.glob("*.safetensors")):
        if f.name in ("goldens.safetensors", "generation.safetensors"):
            continue
        for k, t in load_file(str(f)).items():
            tensors[k] = t
            dtypes[k] = str(t.dtype).replace("torch.", "")
    probes = {}
    for k in PROBE_KEYS:
        if k in tensors:
            t = tensors[k].float()
            probes[k] = {"dtype": dtypes[k], "shape": list(t.shape), "first": t.flatten()[:6].tolist(),
                         "sum": float(t.double().sum())}
    return {"num_tensors": len(tensors), "probes": probes}


def tokenizer_probes(out: Path, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    return [{"text": t, "ids": tok(t)["input_ids"]} for t in texts]


PROBE_TEXTS = ["a photo of a cat", "Question: what color is the car? Answer:", "Two dogs!"]


def write_goldens(out: Path, tensors: dict, meta: dict):
    meta = dict(meta, weights=weight_probes(out), tokenizer=tokenizer_probes(out, PROBE_TEXTS))
    save_file({k: v.detach().contiguous().float() for k, v in tensors.items()}, str(out / "goldens.safetensors"))
    (out / "goldens.json").write_text(json.dumps(meta, indent=1) + "\n")


def stats_line(name, model):
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n} parameters")


def vision_qformer_goldens(model, pixel_values):
    """Vision last_hidden_state, Q-Former last_hidden_state, language projection output."""
    with torch.no_grad():
        vision = model.vision_model(pixel_values=pixel_values).last_hidden_state
        query = model.query_tokens.expand(pixel_values.shape[0], -1, -1)
        mask = torch.ones(vision.shape[:-1], dtype=torch.long)
        qformer = model.qformer(query_embeds=query, encoder_hidden_states=vision, encoder_attention_mask=mask).last_hidden_state
        out = {"vision_last_hidden_state": vision, "qformer_last_hidden_state": qformer}
        if hasattr(model, "language_projection"):
            # As Blip2ForConditionalGeneration: the Q-Former's output in the vision model's dtype
            # (they differ when the Q-Former is kept in f32 under f16).
            out["language_projection"] = model.language_projection(qformer.to(vision.dtype))
    return out


def make_opt(images, out: Path):
    tokenizer = opt_tokenizer()
    processor = save_processor(tokenizer, out)  # adds <image>
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    newline = tokenizer.convert_tokens_to_ids("Ċ")
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, bos_token_id=2, eos_token_id=newline, pad_token_id=1,
        model_type="opt",
    )
    config = Blip2Config(
        vision_config=VISION, qformer_config=QFORMER, text_config=text, num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_index,
    )
    torch.manual_seed(0)
    model = randomize(Blip2ForConditionalGeneration(config).eval(), seed=10, scale=2.0)
    model.generation_config.bos_token_id = 2
    model.generation_config.eos_token_id = newline
    model.generation_config.pad_token_id = 1
    stats_line("tiny-opt", model)
    model.half().save_pretrained(str(out), max_shard_size="60KB")
    # Goldens from the weights as stored: fp16 values, computed in f32.
    model = Blip2ForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    pv = processor(images=[images["rgb_96x64"], images["rgba_64x64"]], return_tensors="pt")["pixel_values"]
    goldens = vision_qformer_goldens(model, pv)
    goldens["pixel_values"] = pv
    meta = {"pixel_values_images": ["images/rgb_96x64.png", "images/rgba_64x64.png"],
            "image_token_index": image_token_index, "eos_token_id": newline,
            "transformers": transformers.__version__, "torch": torch.__version__}
    write_goldens(out, goldens, meta)


def make_t5(images, out: Path):
    tokenizer = t5_tokenizer()
    processor = save_processor(tokenizer, out)
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    text = dict(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        dense_act_fn="gelu", tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        model_type="t5",
    )
    config = Blip2Config(
        vision_config=VISION, qformer_config=QFORMER, text_config=text, num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_index,
    )
    torch.manual_seed(1)
    model = randomize(Blip2ForConditionalGeneration(config).eval(), seed=11, scale=2.0)
    # Flan-T5 keeps an lm_head of its own (tie_word_embeddings: false in the hub config): untie it,
    # so the checkpoint stores both `shared` and a different `lm_head`, and transformers uses the
    # stored lm_head without the d_model^-0.5 rescale.
    lm = model.language_model
    g = torch.Generator().manual_seed(13)
    lm.lm_head.weight = torch.nn.Parameter(torch.randn(lm.lm_head.weight.shape, generator=g) * 2.0 / 32**0.5)
    model.config.text_config.tie_word_embeddings = False
    stats_line("tiny-t5", model)
    model.to(torch.bfloat16).save_pretrained(str(out))
    model = Blip2ForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    lm = model.language_model
    assert not lm.config.scale_decoder_outputs, "Flan-T5 must not rescale the decoder output"
    assert not torch.equal(lm.lm_head.weight, lm.shared.weight), "lm_head must stay separate"
    pv = processor(images=[images["rgb_300x120"]], return_tensors="pt")["pixel_values"]
    goldens = vision_qformer_goldens(model, pv)
    goldens["pixel_values"] = pv
    make_t5_generation_goldens(images, out, model, processor)
    to_hub_processor_layout(out)
    split_qkv_bias(out)
    write_goldens(out, goldens, {"pixel_values_images": ["images/rgb_300x120.png"],
                                 "image_token_index": image_token_index,
                                 "transformers": transformers.__version__, "torch": torch.__version__})


def make_itm(images, out: Path):
    tokenizer = bert_tokenizer()
    processor = save_processor(tokenizer, out)
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    qformer = dict(QFORMER, vocab_size=len(tokenizer), use_qformer_text_input=True)
    config = Blip2Config(
        vision_config=VISION, qformer_config=qformer, num_query_tokens=NUM_QUERY_TOKENS,
        image_text_hidden_size=16, image_token_index=image_token_index,
        architectures=["Blip2ForImageTextRetrieval"],
    )
    torch.manual_seed(2)
    model = randomize(Blip2ForImageTextRetrieval(config).eval(), seed=12, scale=2.0)
    stats_line("tiny-itm", model)
    model.save_pretrained(str(out))
    model = Blip2ForImageTextRetrieval.from_pretrained(str(out), dtype=torch.float32).eval()
    pv = processor(images=[images["palette_48x48"]], return_tensors="pt")["pixel_values"]
    goldens = vision_qformer_goldens(model, pv)
    goldens["pixel_values"] = pv
    retrieval = retrieval_goldens(model, processor, images, goldens)
    write_goldens(out, goldens, {"pixel_values_images": ["images/palette_48x48.png"],
                                 "image_token_index": image_token_index, "retrieval": retrieval,
                                 "transformers": transformers.__version__, "torch": torch.__version__})


RETRIEVAL_IMAGES = ["palette_48x48", "rgb_96x64", "rgba_64x64"]
RETRIEVAL_TEXTS = ["a photo of a cat", "Two dogs running on the beach!", "a red car parked next to a blue house"]


def retrieval_goldens(model, processor, images, goldens):
    """ITC similarities, image and text embeddings for the 3x3 grid of RETRIEVAL_IMAGES x
    RETRIEVAL_TEXTS, and ITM logits / match probabilities for every pair."""
    imgs = [images[n] for n in RETRIEVAL_IMAGES]
    with torch.no_grad():
        inputs = processor(images=imgs, text=RETRIEVAL_TEXTS, return_tensors="pt", padding=True)
        itc = model(**inputs, use_image_text_matching_head=False)
        goldens["itc_similarity"] = itc.logits_per_image
        goldens["itc_image_embeds"] = itc.image_embeds
        goldens["itc_text_embeds"] = itc.text_embeds
        logits = torch.zeros(len(imgs), len(RETRIEVAL_TEXTS), 2)
        for i, img in enumerate(imgs):
            for j, text in enumerate(RETRIEVAL_TEXTS):
                pair = processor(images=[img], text=[text], return_tensors="pt")
                logits[i, j] = model(**pair, use_image_text_matching_head=True).logits_per_image[0]
        goldens["itm_logits"] = logits
        goldens["itm_probability"] = logits.softmax(dim=-1)[..., 1]
    n = model.config.num_query_tokens
    return {"images": [f"images/{n_}.png" for n_ in RETRIEVAL_IMAGES], "texts": RETRIEVAL_TEXTS,
            "text_input_ids": [row[n:] for row in inputs["input_ids"].tolist()],
            "text_attention_mask": [row[n:] for row in inputs["attention_mask"].tolist()]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    args = parser.parse_args()
    import PIL

    if int(PIL.__version__.split(".")[0]) >= 13:
        raise SystemExit(f"Pillow {PIL.__version__}: install the pinned version (see requirements.txt).")
    try:
        import torchvision  # noqa: F401

        raise SystemExit("torchvision is installed: transformers would use its resize, not PIL's. Uninstall it.")
    except ImportError:
        pass
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out = args.out
    for sub in ["images", "preprocess", "tiny-opt", "tiny-t5", "tiny-itm"]:
        shutil.rmtree(out / sub, ignore_errors=True)
    images = make_images(out / "images")
    make_preprocess_goldens(images, out / "preprocess")
    make_opt(images, out / "tiny-opt")
    make_generation_goldens(images, out / "tiny-opt")
    make_t5(images, out / "tiny-t5")
    make_itm(images, out / "tiny-itm")
    import make_half_goldens  # imports this module: only once the checkpoints exist

    make_half_goldens.main(out)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB)")



# ----------------------------------------------------------------------------------------------
# generation goldens (OPT)
# ----------------------------------------------------------------------------------------------

QUESTION = "Question: what is in the picture? Answer:"

GENERATION_CASES = [
    # name, images, prompts (None = captioning), generate() kwargs. The tiny model's "\n" (the
    # configured EOS) is rare, so some cases name a frequent token as eos_token_id to exercise
    # stopping, finished beams and padding of finished rows.
    ("caption_greedy", ["rgb_96x64"], None, dict(max_new_tokens=12)),
    ("caption_eos", ["rgb_96x64"], None, dict(max_new_tokens=12, eos_token_id=12)),
    ("caption_eos_min_new_tokens", ["rgb_96x64"], None, dict(max_new_tokens=12, eos_token_id=12, min_new_tokens=8)),
    ("vqa_greedy", ["rgb_96x64"], [QUESTION], dict(max_new_tokens=10)),
    ("batch_padded", ["rgb_96x64", "rgba_64x64"], ["a photo of", QUESTION], dict(max_new_tokens=8)),
    ("batch_padded_eos", ["rgb_96x64", "rgba_64x64"], ["a photo of", QUESTION],
     dict(max_new_tokens=8, eos_token_id=144)),
    ("beam3", ["rgb_300x120"], None, dict(max_new_tokens=10, num_beams=3)),
    ("beam3_eos", ["rgb_300x120"], None, dict(max_new_tokens=10, num_beams=3, eos_token_id=148)),
    ("beam3_two_returned", ["rgb_96x64"], ["a photo of"], dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)),
    ("penalties", ["rgb_96x64"], None,
     dict(max_new_tokens=14, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=6, eos_token_id=12)),
    ("beam3_length_penalty", ["grey_70x50"], [QUESTION],
     dict(max_new_tokens=9, num_beams=3, length_penalty=2.0, early_stopping=True, eos_token_id=10)),
    ("beam4_length_penalty_negative", ["rgb_20x28"], None,
     dict(max_new_tokens=9, num_beams=4, length_penalty=-1.0, eos_token_id=176)),
]


def step_margins(scores):
    """How close each greedy step came to choosing another token: the smallest top-1/top-2 gap of
    the processed scores over the batch. A reimplementation whose scores differ from these by less
    than half the gap makes the same choice."""
    margins = []
    for step in scores:
        top = step.float().topk(2, dim=-1).values
        gap = top[:, 0] - top[:, 1]
        gap = gap[torch.isfinite(gap)]
        margins.append(float(gap.min()) if gap.numel() else None)
    return margins


def greedy_margins(model, inputs, kwargs):
    """`step_margins` of a greedy case (None for beam search, whose beams tie by construction)."""
    if kwargs.get("num_beams", 1) != 1:
        return None
    generated = model.generate(**inputs, do_sample=False, output_scores=True, return_dict_in_generate=True,
                               **kwargs)
    return step_margins(generated.scores)


def case_record(name, image_names, prompts, kwargs, inputs, out_ids, prompt_len, processor, pad):
    """One generation case as the goldens' JSON stores it: the inputs, the new tokens of every
    returned sequence (without the trailing pads of rows that finished early) and their text."""
    new_tokens = [row[prompt_len:].tolist() for row in out_ids]
    for seq in new_tokens:
        while seq and seq[-1] == pad:
            seq.pop()
    return {
        "name": name,
        "images": [f"images/{n}.png" for n in image_names],
        "prompts": prompts,
        "generate_kwargs": kwargs,
        "input_ids": inputs["input_ids"].tolist() if "input_ids" in inputs else None,
        "attention_mask": inputs["attention_mask"].tolist() if "attention_mask" in inputs else None,
        "new_tokens": new_tokens,
        "texts": processor.batch_decode(out_ids[:, prompt_len:], skip_special_tokens=True),
    }


def make_generation_goldens(images, out: Path):
    """generate() with the tiny OPT: the processor's inputs, the first-step logits and the new
    token ids of every returned sequence, for greedy, batched, beam and penalised decoding."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(out))
    processor.tokenizer.padding_side = "left"
    model = Blip2ForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    cases, tensors = [], {}
    min_gap = float("inf")
    for name, image_names, prompts, kwargs in GENERATION_CASES:
        imgs = [images[n] for n in image_names]
        if prompts is None:
            inputs = processor(images=imgs, return_tensors="pt")
        else:
            inputs = processor(images=imgs, text=prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out_ids = model.generate(**inputs, do_sample=False, **kwargs)
            if "input_ids" in inputs:
                logits = model(**inputs).logits[:, -1, :]
                tensors[f"{name}.first_logits"] = logits
                top2 = logits.topk(2, dim=-1).values
                min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
            margins = greedy_margins(model, inputs, kwargs)
        # transformers returns the whole input row then the new tokens for decoder-only models.
        prompt_len = inputs["input_ids"].shape[1] if "input_ids" in inputs else NUM_QUERY_TOKENS + 1
        cases.append(case_record(name, image_names, prompts, kwargs, inputs, out_ids, prompt_len,
                                 processor, pad=1) | {"step_margins": margins})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "generation.safetensors"))
    meta = {"cases": cases, "min_top1_top2_logit_gap_first_step": min_gap, "pad_token_id": 1}
    (out / "generation.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"generation goldens: {len(cases)} cases, smallest first-step top-1/top-2 logit gap {min_gap:.3f}")
    for c in cases:
        print(f"  {c['name']}: {c['new_tokens']}")



# ----------------------------------------------------------------------------------------------
# generation goldens (Flan-T5)
# ----------------------------------------------------------------------------------------------

T5_GENERATION_CASES = [
    # transformers 5.24 crashes captioning a T5 model from images alone: pass text="" (which the
    # tokenizer turns into "</s>", the encoder input LAVIS uses for captions too).
    ("caption_greedy", ["rgb_96x64"], [""], dict(max_new_tokens=12)),
    ("caption_eos_min_new_tokens", ["rgb_96x64"], [""], dict(max_new_tokens=12, eos_token_id=26, min_new_tokens=3)),
    ("vqa_greedy", ["rgb_96x64"], [QUESTION], dict(max_new_tokens=10)),
    ("batch_padded", ["rgb_96x64", "rgba_64x64"], ["a photo of", QUESTION], dict(max_new_tokens=8)),
    ("batch_padded_eos", ["rgb_96x64", "rgba_64x64"], ["a photo of", QUESTION], dict(max_new_tokens=8, eos_token_id=40)),
    ("beam3", ["rgb_300x120"], [""], dict(max_new_tokens=10, num_beams=3)),
    ("beam3_eos", ["rgb_300x120"], [""], dict(max_new_tokens=10, num_beams=3, eos_token_id=102)),
    ("beam3_two_returned", ["rgb_96x64"], ["a photo of"], dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)),
    ("penalties", ["rgb_96x64"], [""],
     dict(max_new_tokens=14, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=6)),
    ("beam3_length_penalty", ["grey_70x50"], [QUESTION],
     dict(max_new_tokens=9, num_beams=3, length_penalty=2.0, early_stopping=True)),
]


def make_t5_generation_goldens(images, out: Path, model, processor):
    """generate() with the tiny Flan-T5: encoder inputs, encoder output, first-step logits and the
    new token ids (after the decoder start token) of every returned sequence. Takes the model as
    reloaded from the saved files, before the vision bias is rewritten as q_bias/v_bias (a layout
    transformers 5 no longer loads)."""
    lm = model.language_model
    cases, tensors = [], {}
    min_gap = float("inf")
    for name, image_names, prompts, kwargs in T5_GENERATION_CASES:
        imgs = [images[n] for n in image_names]
        inputs = processor(images=imgs, text=prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out_ids = model.generate(**inputs, do_sample=False, **kwargs)
            # The encoder input as generate() builds it: <image> embeddings replaced by the queries.
            proj = vision_qformer_goldens(model, inputs["pixel_values"])["language_projection"]
            embeds = lm.get_input_embeddings()(inputs["input_ids"])
            mask = (inputs["input_ids"] == model.config.image_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask, proj)
            enc = lm.encoder(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).last_hidden_state
            tensors[f"{name}.encoder_last_hidden_state"] = enc
            start = torch.full((len(imgs), 1), lm.config.decoder_start_token_id)
            logits = model(**inputs, decoder_input_ids=start).logits[:, -1, :]
            tensors[f"{name}.first_logits"] = logits
            top2 = logits.topk(2, dim=-1).values
            min_gap = min(min_gap, float((top2[:, 0] - top2[:, 1]).min()))
            margins = greedy_margins(model, inputs, kwargs)
        # The new tokens follow decoder_start_token_id.
        cases.append(case_record(name, image_names, prompts, kwargs, inputs, out_ids, 1, processor, pad=0)
                     | {"step_margins": margins})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "generation.safetensors"))
    meta = {"cases": cases, "min_top1_top2_logit_gap_first_step": min_gap, "pad_token_id": 0}
    (out / "generation.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"T5 generation goldens: {len(cases)} cases, smallest first-step top-1/top-2 logit gap {min_gap:.3f}")
    for c in cases:
        print(f"  {c['name']}: {c['new_tokens']}  input {c['input_ids'][0][-6:]} mask {c['attention_mask'][-1][-6:]}")


if __name__ == "__main__":
    main()
