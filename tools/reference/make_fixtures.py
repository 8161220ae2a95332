#!/usr/bin/env python3
"""Builds the tiny DeepSeek-V3 parity fixtures in tests/fixtures/models from Hugging Face transformers.

For each configuration: a random model with non-trivial weights, saved as config.json plus
safetensors under the official checkpoint names (per-expert mlp.experts.E.{gate,up,down}_proj,
mlp.gate.e_score_correction_bias, and one multi-token-prediction module as layer
num_hidden_layers, DeepSeek's layout), and reference outputs computed by transformers'
DeepseekV3ForCausalLM in float64:
  logits.bin      float32 [T, vocab] of the main model, row-major, little-endian
  mtp_logits.bin  float32 [T, vocab] of MTP depth 1 (transformers has no MTP; the module is
                  built from its DeepseekV3DecoderLayer and RMSNorm as DeepSeek-V3 defines it)
  reference.json  the tokens, the shapes, and the losses

Run where torch and transformers are installed (tools/requirements.txt):
  python3 tools/reference/make_fixtures.py --out tests/fixtures/models
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm

BASE = dict(
    vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
    first_k_dense_replace=1, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=24, kv_lora_rank=16,
    qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=8, n_shared_experts=1,
    num_experts_per_tok=2, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
    scoring_func="sigmoid", topk_method="noaux_tc", hidden_act="silu", max_position_embeddings=64,
    rope_theta=10000.0, rope_scaling=None, rope_interleave=True, rms_norm_eps=1e-6, num_nextn_predict_layers=1,
    tie_word_embeddings=False, attention_bias=False, initializer_range=0.02, bos_token_id=0, eos_token_id=1,
    model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
)

FIXTURES = {
    # q_lora_rank set; two groups of four experts, keep one, top-2.
    "q-lora": dict(length=12),
    # A plain q projection; four groups, keep two, top-3; saved as two shards with an index.
    "no-q-lora": dict(length=12, q_lora_rank=None, n_group=4, topk_group=2, num_experts_per_tok=3, shards=2),
    # YaRN, and a sequence longer than original_max_position_embeddings.
    "yarn": dict(length=40, max_position_embeddings=64,
                 rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                               "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}),
    # More experts and groups, unnormalised gates, another scaling factor, two dense layers.
    "groups": dict(length=16, n_routed_experts=16, n_group=4, topk_group=3, num_experts_per_tok=4,
                   norm_topk_prob=False, routed_scaling_factor=1.5, num_hidden_layers=4, first_k_dense_replace=2),
    # FP8: linear weights in E4M3 with 128x128 block scales (edge blocks partial), the rest in bf16.
    "fp8": dict(length=12, hidden_size=160, intermediate_size=200, moe_intermediate_size=136, q_lora_rank=144,
                kv_lora_rank=136, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4,
                n_group=1, topk_group=1, vocab_size=128, fp8=True),
}


def make_config(overrides):
    config = dict(BASE)
    config.update({k: v for k, v in overrides.items() if k not in ("length", "shards", "fp8")})
    if overrides.get("fp8"):
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                         "weight_block_size": [128, 128]}
    return config


def hf_config(config):
    kwargs = {k: v for k, v in config.items() if k not in ("quantization_config", "architectures", "model_type")}
    rope = kwargs.pop("rope_scaling", None)
    theta = kwargs.pop("rope_theta")
    parameters = {"rope_type": "default", "rope_theta": theta}
    if rope:
        parameters = dict(rope)
        parameters["rope_type"] = parameters.pop("type")
        parameters["rope_theta"] = theta
    config = DeepseekV3Config(**kwargs, rope_parameters=parameters, attn_implementation="eager")
    # The reference runs in float64; the grouped-GEMM experts only take float32 and narrower.
    config._experts_implementation = "eager"
    return config


def randomize(model, generator):
    """Weights of order 1/sqrt(fan_in), norms near 1, biases >= 0 (transformers and DeepSeek then agree)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) / math.sqrt(fan_in))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.rand(b.shape, generator=generator, dtype=b.dtype))


def official_names(state, prefix=""):
    """transformers 5 fuses experts into 3-D tensors; the checkpoint format has one tensor per expert."""
    out = {}
    for name, t in state.items():
        name = prefix + name
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = t[e, :inter].contiguous()
                out[f"{base}{e}.up_proj.weight"] = t[e, inter:].contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = t[e].contiguous()
        else:
            out[name] = t.contiguous()
    return out


class MtpModule(torch.nn.Module):
    """DeepSeek-V3's multi-token-prediction module k = 1, from transformers' building blocks."""

    def __init__(self, config, layer_index):
        super().__init__()
        h = config.hidden_size
        self.enorm = DeepseekV3RMSNorm(h, config.rms_norm_eps)
        self.hnorm = DeepseekV3RMSNorm(h, config.rms_norm_eps)
        self.eh_proj = torch.nn.Linear(2 * h, h, bias=False)
        self.block = DeepseekV3DecoderLayer(config, layer_index)
        self.shared_head_norm = DeepseekV3RMSNorm(h, config.rms_norm_eps)

    def forward(self, model, hidden, tokens):
        length = tokens.shape[1]
        shifted = torch.full_like(tokens, -1)
        shifted[:, :-1] = tokens[:, 1:]
        embedded = model.model.embed_tokens(shifted.clamp(min=0)) * (shifted >= 0).unsqueeze(-1)
        x = self.eh_proj(torch.cat([self.enorm(embedded), self.hnorm(hidden)], dim=-1))
        positions = torch.arange(length).unsqueeze(0)
        cos_sin = model.model.rotary_emb(x, positions)
        mask = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)[None, None]
        x = self.block(x, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
        if isinstance(x, tuple):
            x = x[0]
        return model.lm_head(self.shared_head_norm(x))

    def checkpoint_state(self, config, layer_index, model):
        prefix = f"model.layers.{layer_index}."
        state = {
            prefix + "enorm.weight": self.enorm.weight, prefix + "hnorm.weight": self.hnorm.weight,
            prefix + "eh_proj.weight": self.eh_proj.weight,
            prefix + "shared_head.norm.weight": self.shared_head_norm.weight,
            # DeepSeek stores copies of the shared embedding and head with each module.
            prefix + "embed_tokens.weight": model.model.embed_tokens.weight,
            prefix + "shared_head.head.weight": model.lm_head.weight,
        }
        state.update(official_names(self.block.state_dict(), prefix))
        return {k: v.detach() for k, v in state.items()}


def quantize_fp8(weight):
    """128x128 block E4M3 codes and weight_scale_inv, as troupe and DeepSeek define them."""
    rows, cols = weight.shape
    br, bc = math.ceil(rows / 128), math.ceil(cols / 128)
    codes = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    scale_inv = torch.empty(br, bc, dtype=torch.float32)
    w = weight.float()
    for i in range(br):
        for j in range(bc):
            block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = max(block.abs().max().item(), 1e-4)
            codes[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (block * (448.0 / amax)).to(torch.float8_e4m3fn)
            scale_inv[i, j] = amax / 448.0
    return codes, scale_inv


def dequantize_fp8(codes, scale_inv):
    out = codes.float()
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            out[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= scale_inv[i, j]
    return out


def is_quantized(name, tensor):
    """Linear-layer weights go to FP8; embeddings, the head, norms and the router gate stay in bf16."""
    kept = ("embed_tokens", "lm_head", "shared_head.head", "mlp.gate.weight")
    return tensor.dim() == 2 and name.endswith(".weight") and not any(k in name for k in kept)


def build(name, overrides, out_dir, seed):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = make_config(overrides)
    hf = hf_config(config)
    model = DeepseekV3ForCausalLM(hf).double().eval()
    randomize(model, generator)
    mtp_index = config["num_hidden_layers"]
    mtp = MtpModule(hf, mtp_index).double().eval()
    randomize(mtp, generator)
    with torch.no_grad():
        mtp.block.mlp.gate.e_score_correction_bias.copy_(0.1 * torch.rand(config["n_routed_experts"], generator=generator))

    state = official_names(model.state_dict())
    state.update(mtp.checkpoint_state(hf, mtp_index, model))
    state = {k: v.detach().float() for k, v in state.items()}

    if overrides.get("fp8"):
        stored = {}
        for k, v in state.items():
            if k.endswith("e_score_correction_bias"):
                stored[k] = v  # float32, as DeepSeek stores it
            elif is_quantized(k, v):
                codes, scale_inv = quantize_fp8(v)
                stored[k], stored[k + "_scale_inv"] = codes, scale_inv
                state[k] = dequantize_fp8(codes, scale_inv)
            else:
                stored[k] = v.to(torch.bfloat16)
                state[k] = stored[k].float()
    else:
        stored = state
    # The reference computes with exactly the weights troupe decodes (f32, or FP8/bf16 decoded).
    load_into(model, mtp, state, mtp_index)

    length = overrides["length"]
    tokens = torch.randint(0, config["vocab_size"], (1, length), generator=generator)
    captured = {}
    hook = model.model.layers[-1].register_forward_hook(lambda m, i, o: captured.update(h=o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        logits = model(tokens, use_cache=False).logits[0]
        hook.remove()
        mtp_logits = mtp(model, captured["h"], tokens)[0]
    targets = tokens[0, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:-1], targets).item()
    mtp_loss = torch.nn.functional.cross_entropy(mtp_logits[:-2], tokens[0, 2:]).item()

    directory = os.path.join(out_dir, name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shards = overrides.get("shards", 1)
    if shards == 1:
        save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(directory, "model.safetensors"),
                  metadata={"format": "pt"})
    else:
        names = sorted(stored)
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: stored[k].contiguous() for k in names[s::shards]}
            save_file(part, os.path.join(directory, file), metadata={"format": "pt"})
            weight_map.update({k: file for k in part})
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    logits.float().numpy().astype("<f4").tofile(os.path.join(directory, "logits.bin"))
    mtp_logits.float().numpy().astype("<f4").tofile(os.path.join(directory, "mtp_logits.bin"))
    with open(os.path.join(directory, "reference.json"), "w") as f:
        json.dump({"tokens": tokens[0].tolist(), "vocab_size": config["vocab_size"], "length": length,
                   "loss": loss, "mtp_loss": mtp_loss, "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__, "dtype": "float64"}, f, indent=2)

    # Self-check: transformers reads the files under the official names and gets the same logits.
    if not overrides.get("fp8"):
        reloaded = DeepseekV3ForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                        dtype=torch.float32).eval()
        with torch.no_grad():
            again = reloaded(tokens, use_cache=False).logits[0].double()
        error = ((again - logits).abs().max() / logits.abs().max()).item()
        assert error < 1e-5, f"{name}: transformers reads the saved checkpoint differently ({error})"
    print(f"{name}: {length} tokens, vocab {config['vocab_size']}, loss {loss:.4f}, mtp loss {mtp_loss:.4f}, "
          f"logit range [{logits.min():.3f}, {logits.max():.3f}]")


def load_into(model, mtp, state, mtp_index):
    fused = {}
    own = model.state_dict()
    for k in own:
        if k.endswith("mlp.experts.gate_up_proj"):
            base = k[: -len("gate_up_proj")]
            n = own[k].shape[0]
            fused[k] = torch.stack([torch.cat([state[f"{base}{e}.gate_proj.weight"], state[f"{base}{e}.up_proj.weight"]])
                                    for e in range(n)])
        elif k.endswith("mlp.experts.down_proj"):
            base = k[: -len("down_proj")]
            fused[k] = torch.stack([state[f"{base}{e}.down_proj.weight"] for e in range(own[k].shape[0])])
        else:
            fused[k] = state[k]
    model.load_state_dict({k: v.double() for k, v in fused.items()})
    prefix = f"model.layers.{mtp_index}."
    block = {}
    for k in mtp.block.state_dict():
        full = prefix + k
        if k.endswith("mlp.experts.gate_up_proj"):
            base = full[: -len("gate_up_proj")]
            n = mtp.block.state_dict()[k].shape[0]
            block[k] = torch.stack([torch.cat([state[f"{base}{e}.gate_proj.weight"], state[f"{base}{e}.up_proj.weight"]])
                                    for e in range(n)])
        elif k.endswith("mlp.experts.down_proj"):
            base = full[: -len("down_proj")]
            block[k] = torch.stack([state[f"{base}{e}.down_proj.weight"] for e in range(mtp.block.state_dict()[k].shape[0])])
        else:
            block[k] = state[full]
    mtp.block.load_state_dict({k: v.double() for k, v in block.items()})
    with torch.no_grad():
        mtp.enorm.weight.copy_(state[prefix + "enorm.weight"])
        mtp.hnorm.weight.copy_(state[prefix + "hnorm.weight"])
        mtp.eh_proj.weight.copy_(state[prefix + "eh_proj.weight"])
        mtp.shared_head_norm.weight.copy_(state[prefix + "shared_head.norm.weight"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tests/fixtures/models")
    parser.add_argument("--only", nargs="*", help="fixture names to build (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for index, (name, overrides) in enumerate(FIXTURES.items()):
        if args.only and name not in args.only:
            continue
        build(name, overrides, args.out, seed=1000 + index)


if __name__ == "__main__":
    main()
