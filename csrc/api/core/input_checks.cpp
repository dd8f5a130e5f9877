#include "api/core/input_checks.h"

// For the operator<< that prints a std::vector<c10::SymInt> shape in a message.
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "api/core/op_outputs.h"

namespace selfattn {

c10::SymInt sequence_count(const at::Tensor& query, const AttentionOptions& o) {
  return o.cu_seqlens_q.has_value() ? o.cu_seqlens_q->sym_size(0) - 1 : query.sym_size(0);
}

namespace {

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
  if (o.block_table.has_value()) {
    const at::Tensor& table = *o.block_table;
    TORCH_CHECK(table.scalar_type() == at::kInt && table.dim() == 2, op,
                ": block_table must be a 2-D int32 tensor (batch, max_blocks), got ", table.dim(), "-D ",
                table.scalar_type());
    TORCH_CHECK(table.device() == query.device(), op, ": block_table must be on query's device (", query.device(),
                "), got ", table.device());
    TORCH_CHECK(table.is_contiguous(), op, ": block_table must be contiguous");
    TORCH_CHECK(table.sym_size(0) == query.sym_size(0), op, ": block_table must have one row per sequence (",
                query.sym_size(0), "), got ", table.sym_size(0));
    TORCH_CHECK(o.seqused_k.has_value() && !o.cu_seqlens_q.has_value(), op,
                ": block_table (a paged cache) needs seqused_k, the keys each sequence uses, and no cu_seqlens");
    TORCH_CHECK(!attn_mask.has_value(), op, ": attn_mask cannot be combined with block_table (a paged cache)");
    TORCH_CHECK(key.sym_size(2) > 0 || table.sym_size(1) == 0, op,
                ": the cache's block_size (key's dim 2) must be at least 1, got ", key.sym_size(2));
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
      const int64_t available = cu_k != nullptr ? int64_t(cu_k[s + 1]) - cu_k[s] : o.key_capacity(key);
      // kv_cache_attention's cache_seqlens arrive as seqused_k: the message names both.
      TORCH_CHECK(used[s] >= 0 && used[s] <= available, op, ": cache_seqlens[", s, "] = ", used[s],
                  " (seqused_k) must be in [0, ", available, "], the keys that sequence has");
    }
  }
  if (o.block_table.has_value()) {
    // Only the blocks that hold a used key are read; the rest of a row may be anything (padding).
    const int64_t block_size = key.size(2), blocks = key.size(0), max_blocks = o.block_table->size(1);
    const int32_t* table = o.block_table->const_data_ptr<int32_t>();
    const int32_t* used = o.seqused_k->const_data_ptr<int32_t>();
    for (int64_t s = 0; s < sequences; ++s) {
      for (int64_t i = 0; i * block_size < used[s]; ++i) {
        const int32_t block = table[s * max_blocks + i];
        TORCH_CHECK(block >= 0 && block < blocks, op, ": block_table[", s, ", ", i, "] = ", block,
                    " is not a block of the cache, which has ", blocks, " (key_cache's dim 0)");
      }
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
  if (options.block_table.has_value()) {
    // A paged cache: key and value are the cache's blocks, as many as it has.
    TORCH_CHECK(value.sym_size(0) == key.sym_size(0), op, ": key and value must have one number of blocks, got ",
                key.sym_size(0), " and ", value.sym_size(0));
  } else {
    TORCH_CHECK(key.sym_size(0) == query.sym_size(0) && value.sym_size(0) == query.sym_size(0), op,
                ": query, key and value must have one batch size, got ", query.sym_size(0), ", ", key.sym_size(0),
                " and ", value.sym_size(0));
  }
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
                                const std::optional<at::Tensor>& grad_logsumexp, const AttentionOptions& options) {
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
  if (grad_logsumexp.has_value()) {
    TORCH_CHECK(grad_logsumexp->sym_sizes() == logsumexp.sym_sizes() &&
                    grad_logsumexp->scalar_type() == logsumexp.scalar_type() &&
                    grad_logsumexp->layout() == at::kStrided,
                op, ": grad_logsumexp must be a dense tensor of logsumexp's shape ", logsumexp.sym_sizes(),
                " and dtype ", logsumexp.scalar_type(), ", got shape ", grad_logsumexp->sym_sizes(), " and dtype ",
                grad_logsumexp->scalar_type());
    TORCH_CHECK(grad_logsumexp->device() == query.device(), op, ": grad_logsumexp must be on query's device (",
                query.device(), "), got ", grad_logsumexp->device());
  }
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

}  // namespace selfattn
