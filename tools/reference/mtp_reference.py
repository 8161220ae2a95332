"""DeepSeek-V3's multi-token prediction on top of transformers' DeepseekV3ForCausalLM, which has
none, so that the references troupe is measured against (bench_model_hf.py on the CPU,
bench_train_hf.py on the GPU) do the same work as troupe's step, MTP module included.

Built from transformers' own parts as the DeepSeek-V3 report and troupe define it (depth k):
    h'_i = eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)])   (h^0: the hidden state before model.norm)
    h^k  = DeepseekV3DecoderLayer(h')   (index num_hidden_layers + k - 1: MoE past first_k_dense_replace)
    loss_k = cross-entropy of lm_head(shared_head.norm(h^k))_i against t_{i+k+1}
    loss = main loss + weight * mean over k of loss_k
The embedding and lm_head are the main model's, as in DeepSeek-V3. With depth 0 the step is the
plain model's.
"""

import torch
import torch.nn.functional as F
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (DeepseekV3DecoderLayer,
                                                                  DeepseekV3RMSNorm)


class MTPModule(torch.nn.Module):
    def __init__(self, config, index):
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.enorm = DeepseekV3RMSNorm(h, eps)
        self.hnorm = DeepseekV3RMSNorm(h, eps)
        self.eh_proj = torch.nn.Linear(2 * h, h, bias=False)
        self.block = DeepseekV3DecoderLayer(config, index)
        self.head_norm = DeepseekV3RMSNorm(h, eps)


class TrainingLoss(torch.nn.Module):
    """`model` plus `depths` MTP modules; forward(tokens) returns the training loss."""

    def __init__(self, model, depths, weight=0.3):
        super().__init__()
        config = model.config
        self.model = model
        self.depths, self.weight = depths, weight
        if depths and getattr(config, "_attn_implementation", "sdpa") != "sdpa":
            raise ValueError("the MTP reference relies on SDPA's causal default (no mask is "
                             f"passed); got attention {config._attn_implementation!r}")
        self.mtp = torch.nn.ModuleList(
            MTPModule(config, config.num_hidden_layers + k) for k in range(depths))
        # Built outside from_config, the modules get transformers' initialisation here: without
        # it the router's weight stays zero (every token ties and goes to the same experts) and
        # the experts' weights keep torch.empty's leftovers.
        for module in self.mtp.modules():
            model._init_weights(module)
        self.final = None  # the hidden state entering model.norm: h^0
        model.model.norm.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs):
        self.final = inputs[0]

    def forward(self, tokens):
        out = self.model(input_ids=tokens, labels=tokens)
        if not self.depths:
            return out.loss
        inner = self.model.model
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device).unsqueeze(0)
        previous, extra = self.final, 0.0
        for k, m in enumerate(self.mtp, start=1):
            ahead = F.pad(tokens[:, k:], (0, k))  # t_{i+k}, zeros past the end
            joined = torch.cat([m.enorm(inner.embed_tokens(ahead)), m.hnorm(previous)], dim=-1)
            x = m.eh_proj(joined)
            x = m.block(x, position_embeddings=inner.rotary_emb(x, positions),
                        position_ids=positions)
            x = x[0] if isinstance(x, tuple) else x
            logits = self.model.lm_head(m.head_norm(x))
            extra = extra + F.cross_entropy(logits[:, :length - k - 1].flatten(0, 1).float(),
                                            tokens[:, k + 1:].flatten())
            previous = x
        return out.loss + self.weight * extra / self.depths


def depths_of(config):
    """The config's MTP depth (num_nextn_predict_layers), 0 where it has none."""
    return getattr(config, "num_nextn_predict_layers", 0) or 0
