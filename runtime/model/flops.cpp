#include "runtime/model/flops.hpp"

namespace troupe {

flops_per_token model_flops(const model_config& c, std::int64_t length, bool with_mtp) {
  const double h = static_cast<double>(c.hidden_size),
               heads = static_cast<double>(c.num_attention_heads);
  const double qk = static_cast<double>(c.qk_head_dim()), v = static_cast<double>(c.v_head_dim);
  const double kv = static_cast<double>(c.kv_lora_rank),
               rope = static_cast<double>(c.qk_rope_head_dim);
  // Attention weights per token.
  double attention = c.q_lora_rank ? h * static_cast<double>(*c.q_lora_rank) +
                                         static_cast<double>(*c.q_lora_rank) * heads * qk
                                   : h * heads * qk;
  attention +=
      h * (kv + rope) + kv * heads * (static_cast<double>(c.qk_nope_head_dim) + v) + heads * v * h;
  // Causal attention: on average length / 2 keys per query, for scores and for values.
  const double attention_core = heads * (qk + v) * static_cast<double>(length) / 2.0;
  const double dense = 3.0 * h * static_cast<double>(c.intermediate_size);
  const double expert = 3.0 * h * static_cast<double>(c.moe_intermediate_size);
  const double moe =
      static_cast<double>(c.n_routed_experts) * h +
      (static_cast<double>(c.num_experts_per_tok) + static_cast<double>(c.n_shared_experts)) *
          expert;
  double multiply_adds = static_cast<double>(c.vocab_size) * h;  // the output head
  for (std::int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
    multiply_adds += attention + attention_core + (c.is_moe_layer(layer) ? moe : dense);
  if (with_mtp)
    multiply_adds +=
        static_cast<double>(c.num_nextn_predict_layers) *
        (2.0 * h * h + attention + attention_core + (c.n_routed_experts > 0 ? moe : dense) +
         static_cast<double>(c.vocab_size) * h);
  return {2.0 * multiply_adds};
}

}  // namespace troupe
