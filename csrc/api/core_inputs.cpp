#include "api/core_inputs.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>
#include <vector>

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

at::ScalarType accumulator_type(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

namespace {

// The number of sequences: packed ones, or one per batch.
c10::SymInt sequence_count(const at::Tensor& query, const AttentionOptions& o) {
  return o.cu_seqlens_q.has_value() ? o.cu_seqlens_q->sym_size(0) - 1 : query.sym_size(0);
}

void check_int32_vector(const char* op, const char* name, const at::Tensor& t, const at::Tensor& query) {
  TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1, op, ": ", name, " must be a 1-D int32 tensor, got ",
              t.dim(), "-D ", t.scalar_type());
  TORCH_CHECK(t.device() == query.device(), op, ": ", name, " must be on query's device (", query.device(), "), got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_options(const char* op, const at::Tensor& query, const at::Tensor& key,
                   const std::optional<at::Tensor>& attn_mask, const AttentionOptions& o) {
  TORCH_CHECK(o.window_left >= -1 && o.window_right >= -1, op,
              ": window_left and window_right must be >= 0, or -1 for no bound, got ", o.window_left, " and ",
              o.window_right);
  TORCH_CHECK(o.softcap >= 0.0 && std::isfinite(o.softcap), op, ": softcap must be a finite number >= 0 (0: none), got ",
              o.softcap);
  if (o.alibi_slopes.has_value()) {
    const at::Tensor& slopes = *o.alibi_slopes;
    TORCH_CHECK(slopes.is_floating_point(), op, ": alibi_slopes must be a floating-point tensor, got ",
                slopes.scalar_type());
    TORCH_CHECK(slopes.device() == query.device(), op, ": alibi_slopes must be on query's device (", query.device(),
                "), got ", slopes.device());
    const bool per_head = slopes.dim() == 1 && slopes.sym_size(0) == query.sym_size(1);
    const bool per_sequence = slopes.dim() == 2 && slopes.sym_size(0) == sequence_count(query, o) &&
                              slopes.sym_size(1) == query.sym_size(1);
    TORCH_CHECK(per_head || per_sequence, op, ": alibi_slopes must have shape (Hq,) = (", query.sym_size(1),
                ",) or (sequences, Hq) = (", sequence_count(query, o), ", ", query.sym_size(1), "), got ",
                slopes.sym_sizes());
  }
  TORCH_CHECK(o.cu_seqlens_q.has_value() == o.cu_seqlens_k.has_value(), op,
              ": cu_seqlens_q and cu_seqlens_k must be given together");
  if (o.cu_seqlens_q.has_value()) {
    check_int32_vector(op, "cu_seqlens_q", *o.cu_seqlens_q, query);
    check_int32_vector(op, "cu_seqlens_k", *o.cu_seqlens_k, query);
    TORCH_CHECK(o.cu_seqlens_q->sym_size(0) >= 1 && o.cu_seqlens_k->sym_size(0) == o.cu_seqlens_q->sym_size(0), op,
                ": cu_seqlens_q and cu_seqlens_k must have one length (sequences + 1 >= 1), got ",
                o.cu_seqlens_q->sym_size(0), " and ", o.cu_seqlens_k->sym_size(0));
    TORCH_CHECK(query.sym_size(0) == 1 && key.sym_size(0) == 1, op,
                ": with cu_seqlens, query, key and value hold packed sequences in a batch of 1, got batch ",
                query.sym_size(0));
    TORCH_CHECK(!attn_mask.has_value(), op, ": attn_mask cannot be combined with cu_seqlens (packed sequences)");
    TORCH_CHECK(o.max_seqlen_q >= 0 && o.max_seqlen_k >= 0, op,
                ": max_seqlen_q and max_seqlen_k must be given (>= 0) with cu_seqlens, got ", o.max_seqlen_q, " and ",
                o.max_seqlen_k);
  }
  if (o.seqused_k.has_value()) {
    check_int32_vector(op, "seqused_k", *o.seqused_k, query);
    TORCH_CHECK(o.seqused_k->sym_size(0) == sequence_count(query, o), op, ": seqused_k must have one entry per sequence (",
                sequence_count(query, o), "), got ", o.seqused_k->sym_size(0));
  }
}

}  // namespace

void check_sequence_values(const char* op, const at::Tensor& query, const at::Tensor& key,
                           const AttentionOptions& o) {
  const int64_t sequences = sequence_count(query, o).guard_int(__FILE__, __LINE__);
  if (o.cu_seqlens_q.has_value()) {
    for (const auto& [name, cu, total, bound, bound_name] :
         {std::tuple{"cu_seqlens_q", &*o.cu_seqlens_q, query.size(2), o.max_seqlen_q, "max_seqlen_q"},
          std::tuple{"cu_seqlens_k", &*o.cu_seqlens_k, key.size(2), o.max_seqlen_k, "max_seqlen_k"}}) {
      const int32_t* offsets = cu->const_data_ptr<int32_t>();
      TORCH_CHECK(offsets[0] == 0 && offsets[sequences] == total, op, ": ", name,
                  " must run from 0 to the number of packed rows (", total, "), got ", offsets[0], " to ",
                  offsets[sequences]);
      for (int64_t s = 0; s < sequences; ++s) {
        const int64_t length = int64_t(offsets[s + 1]) - offsets[s];
        TORCH_CHECK(length >= 0, op, ": ", name, " must not decrease, but entry ", s + 1, " (", offsets[s + 1],
                    ") is below entry ", s, " (", offsets[s], ")");
        TORCH_CHECK(length <= bound, op, ": sequence ", s, " has ", length, " rows, more than ", bound_name, " = ",
                    bound);
      }
    }
  }
  if (o.seqused_k.has_value()) {
    const int32_t* used = o.seqused_k->const_data_ptr<int32_t>();
    const int32_t* cu_k = o.cu_seqlens_k.has_value() ? o.cu_seqlens_k->const_data_ptr<int32_t>() : nullptr;
    for (int64_t s = 0; s < sequences; ++s) {
      const int64_t available = cu_k != nullptr ? int64_t(cu_k[s + 1]) - cu_k[s] : key.size(2);
      // kv_cache_attention's cache_seqlens arrive as seqused_k: the message names both.
      TORCH_CHECK(used[s] >= 0 && used[s] <= available, op, ": cache_seqlens[", s, "] = ", used[s],
                  " (seqused_k) must be in [0, ", available, "], the keys that sequence has");
    }
  }
}

void check_core_inputs(const char* op, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
                       const AttentionOptions& options) {
  for (const auto& [name, t] : {std::pair{"query", &query}, {"key", &key}, {"value", &value}}) {
    // Before anything reads a size: a nested tensor has none.
    TORCH_CHECK(!t->is_nested(), op, ": ", name, " is a nested tensor, which the core ops do not take");
    TORCH_CHECK(t->dim() == 4, op, ": ", name, " must be 4-D (batch, heads, length, dim), got ", t->dim(), "-D");
    TORCH_CHECK(t->layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor, got ", t->layout());
    TORCH_CHECK(t->device() == query.device(), op, ": query, key and value must be on one device, got query on ",
                query.device(), " and ", name, " on ", t->device());
    TORCH_CHECK(t->scalar_type() == query.scalar_type(), op, ": query, key and value must have one dtype, got query ",
                query.scalar_type(), " and ", name, " ", t->scalar_type());
  }
  const auto dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, op,
              ": query must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(key.sym_size(0) == query.sym_size(0) && value.sym_size(0) == query.sym_size(0), op,
              ": query, key and value must have one batch size, got ", query.sym_size(0), ", ", key.sym_size(0),
              " and ", value.sym_size(0));
  TORCH_CHECK(value.sym_size(1) == key.sym_size(1), op, ": key and value must have one head count, got ",
              key.sym_size(1), " and ", value.sym_size(1));
  // No heads at all (both 0) is an empty problem, as PyTorch takes it.
  const bool no_heads = query.sym_size(1) == 0 && key.sym_size(1) == 0;
  TORCH_CHECK(no_heads || (key.sym_size(1) > 0 && query.sym_size(1) % key.sym_size(1) == 0), op,
              ": key's head count (", key.sym_size(1), ") must divide query's (", query.sym_size(1), ")");
  TORCH_CHECK(key.sym_size(3) == query.sym_size(3), op, ": key's last dim must equal query's (E), got ",
              key.sym_size(3), " and ", query.sym_size(3));
  TORCH_CHECK(value.sym_size(2) == key.sym_size(2), op, ": value's length must equal key's (S), got ",
              value.sym_size(2), " and ", key.sym_size(2));
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, op, ": dropout_p must be in [0, 1], got ", dropout_p);
  check_options(op, query, key, attn_mask, options);
  if (!attn_mask.has_value()) return;

  const at::Tensor& mask = *attn_mask;
  TORCH_CHECK(!is_causal, op, ": attn_mask and is_causal=True cannot be given together");
  TORCH_CHECK(!mask.is_nested(), op, ": attn_mask is a nested tensor, which the core ops do not take");
  TORCH_CHECK(mask.dim() == 4, op, ": attn_mask must be 4-D, got ", mask.dim(), "-D");
  TORCH_CHECK(mask.layout() == at::kStrided, op, ": attn_mask must be a dense (strided) tensor");
  TORCH_CHECK(mask.device() == query.device(), op, ": attn_mask must be on query's device ", query.device(),
              ", got ", mask.device());
  TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kFloat || mask.scalar_type() == dtype, op,
              ": attn_mask must be bool, float32 or query's dtype (", dtype, "), got ", mask.scalar_type());
  const c10::SymInt full[4] = {query.sym_size(0), query.sym_size(1), query.sym_size(2), key.sym_size(2)};
  for (int d = 0; d < 4; ++d) {
    TORCH_CHECK(mask.sym_size(d) == 1 || mask.sym_size(d) == full[d], op, ": attn_mask dim ", d, " must be 1 or ",
                full[d], " to broadcast to (batch, Hq, L, S), got attn_mask of shape ", mask.sym_sizes());
  }
}

void check_core_backward_inputs(const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                                const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
                                double dropout_p, bool is_causal, bool attn_mask_requires_grad,
                                const AttentionOptions& options) {
  const char* op = "attention_backward";
  check_core_inputs(op, query, key, value, attn_mask, dropout_p, is_causal, options);
  const std::vector<c10::SymInt> out_shape = {query.sym_size(0), query.sym_size(1), query.sym_size(2),
                                              value.sym_size(3)};
  for (const auto& [name, t] : {std::pair{"grad_output", &grad_output}, {"output", &output}}) {
    TORCH_CHECK(t->sym_sizes() == c10::SymIntArrayRef(out_shape), op, ": ", name, " must have shape ", out_shape,
                " (batch, Hq, L, Ev), got ", t->sym_sizes());
    TORCH_CHECK(t->scalar_type() == query.scalar_type() && t->device() == query.device(), op, ": ", name,
                " must have query's dtype and device");
    TORCH_CHECK(t->layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor");
  }
  TORCH_CHECK(logsumexp.sym_sizes() == c10::SymIntArrayRef(out_shape).slice(0, 3), op,
              ": logsumexp must have shape (batch, Hq, L), got ", logsumexp.sym_sizes());
  TORCH_CHECK(logsumexp.scalar_type() == accumulator_type(query.scalar_type()), op, ": logsumexp must be a ",
              accumulator_type(query.scalar_type()), " tensor, as attention_forward returns it");
  for (const auto& [name, t] : {std::pair{"logsumexp", &logsumexp}, {"rng_state", &rng_state}}) {
    TORCH_CHECK(t->device() == query.device(), op, ": ", name, " must be on query's device (", query.device(),
                ") as attention_forward returns it, got ", t->device());
  }
  // The kernels read its two elements through the data pointer.
  TORCH_CHECK(rng_state.sym_numel() == 2 && rng_state.scalar_type() == at::kLong && rng_state.is_contiguous(), op,
              ": rng_state must be the 2-element int64 tensor that attention_forward returns, contiguous");
  TORCH_CHECK(!attn_mask_requires_grad || (attn_mask.has_value() && attn_mask->is_floating_point()), op,
              ": attn_mask_requires_grad is set, so attn_mask must be a floating-point tensor");
  TORCH_CHECK(!attn_mask_requires_grad || !options.has_sequences(), op,
              ": attn_mask cannot get a gradient together with seqused_k or cu_seqlens");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_forward_outputs(const at::Tensor& query,
                                                                        const at::Tensor& value) {
  const auto B = query.sym_size(0), Hq = query.sym_size(1), L = query.sym_size(2);
  auto output = at::empty_symint({B, Hq, L, value.sym_size(3)}, query.options());
  auto logsumexp = at::empty_symint({B, Hq, L}, query.options().dtype(accumulator_type(query.scalar_type())));
  auto rng_state = at::empty({2}, query.options().dtype(at::kLong));
  return {output, logsumexp, rng_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_backward_outputs(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, bool attn_mask_requires_grad) {
  const bool mask_grad = attn_mask_requires_grad && attn_mask.has_value();
  auto grad_mask = mask_grad ? at::empty_symint(attn_mask->sym_sizes(), attn_mask->options())
                             : at::empty({0}, query.options());
  return {at::empty_symint(query.sym_sizes(), query.options()), at::empty_symint(key.sym_sizes(), key.options()),
          at::empty_symint(value.sym_sizes(), value.options()), grad_mask};
}

void read_dropout_state(const at::Tensor& rng_state, DropoutParams& dropout) {
  const auto* state = rng_state.const_data_ptr<int64_t>();
  dropout.seed = static_cast<uint64_t>(state[0]);
  dropout.offset = static_cast<uint64_t>(state[1]);
}

void zero_unused_key_gradients(const AttentionOptions& options, at::Tensor& grad_key, at::Tensor& grad_value) {
  if (!options.seqused_k.has_value()) return;
  grad_key.zero_();
  grad_value.zero_();
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
  return p;
}

}  // namespace selfattn
