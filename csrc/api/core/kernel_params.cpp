#include "api/core/kernel_params.h"

#include <c10/util/Exception.h>

#include "api/core/input_checks.h"
#include "api/core/op_outputs.h"

namespace selfattn {

ElementType element_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return ElementType::Float16;
    case at::kBFloat16: return ElementType::BFloat16;
    case at::kFloat: return ElementType::Float32;
    case at::kDouble: return ElementType::Float64;
    case at::kBool: return ElementType::Bool;
    default: TORCH_CHECK(false, "selfattn: no kernel for dtype ", dtype);
  }
}

void read_dropout_state(const at::Tensor& rng_state, DropoutParams& dropout) {
  const auto* state = rng_state.const_data_ptr<int64_t>();
  dropout.seed = static_cast<uint64_t>(state[0]);
  dropout.offset = static_cast<uint64_t>(state[1]);
}

TensorView tensor_view(const at::Tensor& t) {
  return TensorView{const_cast<void*>(t.data_ptr()), Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

AttentionOptions kernel_options(const AttentionOptions& options, at::ScalarType dtype) {
  AttentionOptions o = options;
  if (o.alibi_slopes.has_value()) o.alibi_slopes = o.alibi_slopes->to(accumulator_type(dtype)).contiguous();
  return o;
}

AttentionParams make_params(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
                            const at::Tensor& logsumexp, double dropout_p, bool is_causal, double scale,
                            const AttentionOptions& options) {
  AttentionParams p;
  p.dtype = element_type(query.scalar_type());
  p.batch = query.size(0);
  p.q_heads = query.size(1);
  p.kv_heads = key.size(1);
  p.q_len = query.size(2);
  p.kv_len = key.size(2);
  p.head_dim = query.size(3);
  p.value_dim = value.size(3);
  p.q = tensor_view(query);
  p.k = tensor_view(key);
  p.v = tensor_view(value);
  p.out = tensor_view(output);
  p.logsumexp = logsumexp.data_ptr();
  if (attn_mask.has_value()) {
    const at::Tensor& mask = *attn_mask;
    p.mask_kind = mask.scalar_type() == at::kBool ? MaskKind::Boolean : MaskKind::Additive;
    p.mask_dtype = element_type(mask.scalar_type());
    // Expanding gives the broadcast dimensions stride 0: a view, no copy.
    p.mask = tensor_view(mask.expand({p.batch, p.q_heads, p.q_len, p.kv_len}));
    p.mask_batch = mask.size(0);
    p.mask_heads = mask.size(1);
    p.mask_rows = mask.size(2);
    p.mask_cols = mask.size(3);
  }
  p.rows_per_head = p.q_len;
  p.causal = is_causal;
  p.bottom_right = options.bottom_right;
  p.window_left = options.window_left;
  p.window_right = options.window_right;
  p.scale = scale;
  p.softcap = options.softcap;
  if (options.alibi_slopes.has_value()) {
    const at::Tensor& slopes = *options.alibi_slopes;
    TORCH_INTERNAL_ASSERT(slopes.scalar_type() == accumulator_type(query.scalar_type()) && slopes.is_contiguous());
    p.alibi_slopes = slopes.const_data_ptr();
    p.alibi_batch_stride = slopes.dim() == 2 ? slopes.size(1) : 0;
  }
  p.dropout.p = dropout_p;  // the backend fills in the seed and offset from its rng_state
  p.sequences = sequence_count(query, options).guard_int(__FILE__, __LINE__);
  p.max_seqlen_q = p.q_len;
  p.max_seqlen_k = p.kv_len;
  if (options.cu_seqlens_q.has_value()) {
    p.cu_seqlens_q = options.cu_seqlens_q->const_data_ptr<int32_t>();
    p.cu_seqlens_k = options.cu_seqlens_k->const_data_ptr<int32_t>();
    p.max_seqlen_q = options.max_seqlen_q;
    p.max_seqlen_k = options.max_seqlen_k;
  }
  if (options.seqused_k.has_value()) p.seqused_k = options.seqused_k->const_data_ptr<int32_t>();
  if (options.block_table.has_value()) {
    const at::Tensor& table = *options.block_table;
    p.block_table = table.const_data_ptr<int32_t>();
    p.block_table_stride = table.size(1);
    p.block_size = key.size(2);
    p.kv_len = p.max_seqlen_k = options.key_capacity(key);
  }
  return p;
}

}  // namespace selfattn
