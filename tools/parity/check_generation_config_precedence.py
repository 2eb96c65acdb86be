#!/usr/bin/env python3
"""Which ids transformers' BLIP-2 and InstructBLIP `generate` stop and pad on, when the top-level
generation_config.json disagrees with config.json's text_config.

Copies each tiny fixture, writes other eos/pad ids and max_new_tokens into its
generation_config.json, loads it with transformers and asserts that the language model's
generation config (the one `generate` hands over to) still holds text_config's ids and does not
see the file's max_new_tokens (nor, for T5, its decoder_start_token_id). tests/instructblip.rs checks our side of the same rule.

    python tools/parity/check_generation_config_precedence.py
"""

import json
import pathlib
import shutil
import tempfile

from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def check(name, cls):
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / name
        shutil.copytree(FIXTURES / name, copy)
        path = copy / "generation_config.json"
        generation = json.loads(path.read_text())
        generation.update(eos_token_id=77, pad_token_id=78, max_new_tokens=3, decoder_start_token_id=79)
        path.write_text(json.dumps(generation))
        model = cls.from_pretrained(copy)
        top, lm = model.generation_config, model.language_model.generation_config
        text = model.config.text_config
        assert (top.eos_token_id, top.pad_token_id, top.max_new_tokens) == (77, 78, 3), top
        assert (lm.eos_token_id, lm.pad_token_id) == (text.eos_token_id, text.pad_token_id), lm
        assert lm.max_new_tokens is None, lm
        if text.is_encoder_decoder:
            assert lm.decoder_start_token_id == text.decoder_start_token_id, lm
        print(f"{name}: generate stops on text_config's eos {lm.eos_token_id}, pads with "
              f"{lm.pad_token_id}; the file's 77/78/max_new_tokens=3/decoder start 79 are not used")


check("tiny-opt", Blip2ForConditionalGeneration)
check("tiny-t5", Blip2ForConditionalGeneration)
check("tiny-instructblip-llama", InstructBlipForConditionalGeneration)
