#!/usr/bin/env python3
"""Greedy continuations of the parity fixtures by transformers, for troupe's generation tests.

For each fixture directory (tests/fixtures/models/NAME, made by make_fixtures.py), transformers'
DeepseekV3ForCausalLM reads the checkpoint, and greedy decoding with its KV cache
(past_key_values, one token per forward after the prompt) continues the fixture's tokens for
--new-tokens tokens, in float64 where transformers can (float32 otherwise; the file says which).
EOS does not stop it. An FP8 fixture (block-scaled E4M3 weights, which transformers reads only
through its GPU kernels) is decoded here to the weights troupe computes with, and loaded into
transformers' model in float64 as make_fixtures.py built its reference. Writes NAME/generate.json: {"prompt", "generated", "dtype", "torch",
"transformers"}.

  python3 tools/reference/make_generate_fixture.py --fixtures tests/fixtures/models [--out DIR]
"""
import argparse
import glob
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import DeepseekV3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures  # noqa: E402  (hf_config, dequantize_fp8, load_into, MtpModule)


def load_fp8(directory):
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    stored = {}
    for file in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        stored.update(load_file(file))
    state = {}
    for name, tensor in stored.items():
        if name.endswith("_scale_inv"):
            continue
        scale = stored.get(name + "_scale_inv")
        state[name] = make_fixtures.dequantize_fp8(tensor, scale) if scale is not None else tensor.float()
    hf = make_fixtures.hf_config(config)
    model = DeepseekV3ForCausalLM(hf).double().eval()
    mtp_index = config["num_hidden_layers"]
    mtp = make_fixtures.MtpModule(hf, mtp_index).double().eval()
    make_fixtures.load_into(model, mtp, state, mtp_index)
    return model, "float64"


def load(directory):
    model = DeepseekV3ForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                  dtype=torch.float32).eval()
    try:  # float64 needs the per-expert loop (the grouped-GEMM experts take float32 and narrower)
        model.config._experts_implementation = "eager"
        for module in model.modules():
            if hasattr(module, "config"):
                module.config._experts_implementation = "eager"
        model = model.double()
        with torch.no_grad():
            model(torch.tensor([[0, 1]]), use_cache=False)
        return model, "float64"
    except Exception as error:  # noqa: BLE001 - any failure: fall back to float32
        print(f"  float64 failed ({type(error).__name__}: {error}); float32")
        return model.float(), "float32"


def continue_greedily(model, prompt, new_tokens):
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        past, generated = out.past_key_values, []
        token = int(out.logits[0, -1].argmax())
        for _ in range(new_tokens):
            generated.append(token)
            out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
    return generated


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", default="tests/fixtures/models")
    parser.add_argument("--out", help="write NAME.json here instead of NAME/generate.json")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--only", nargs="*", default=["q-lora", "no-q-lora", "yarn", "groups"])
    args = parser.parse_args()
    for name in args.only:
        directory = os.path.join(args.fixtures, name)
        with open(os.path.join(directory, "reference.json")) as f:
            prompt = json.load(f)["tokens"]
        with open(os.path.join(directory, "config.json")) as f:
            quantized = "quantization_config" in json.load(f)
        model, dtype = load_fp8(directory) if quantized else load(directory)
        generated = continue_greedily(model, prompt, args.new_tokens)
        result = {"prompt": prompt, "generated": generated, "dtype": dtype,
                  "torch": torch.__version__, "transformers": __import__("transformers").__version__}
        path = os.path.join(args.out, f"{name}.json") if args.out else os.path.join(directory, "generate.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"{name}: {dtype}, prompt {len(prompt)} tokens, generated {generated}")


if __name__ == "__main__":
    main()
