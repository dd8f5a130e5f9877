// The keyword-only arguments of the core ops (SELFATTN_OPTIONS in
// csrc/ops.cpp), gathered so that the code between the ops and the kernels
// passes one value instead of ten.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace selfattn {

struct AttentionOptions {
  int64_t window_left = -1, window_right = -1;
  bool bottom_right = false;
  std::optional<at::Tensor> alibi_slopes;
  double softcap = 0.0;
  std::optional<at::Tensor> cu_seqlens_q, cu_seqlens_k, seqused_k;
  int64_t max_seqlen_q = -1, max_seqlen_k = -1;

  bool has_sequences() const { return cu_seqlens_q.has_value() || seqused_k.has_value(); }
};

// The options as the op kernels receive them, argument by argument.
inline AttentionOptions attention_options(int64_t window_left, int64_t window_right, bool bottom_right,
                                          const std::optional<at::Tensor>& alibi_slopes, double softcap,
                                          const std::optional<at::Tensor>& cu_seqlens_q,
                                          const std::optional<at::Tensor>& cu_seqlens_k,
                                          const std::optional<at::Tensor>& seqused_k, int64_t max_seqlen_q,
                                          int64_t max_seqlen_k) {
  return AttentionOptions{window_left,  window_right, bottom_right, alibi_slopes, softcap,
                          cu_seqlens_q, cu_seqlens_k, seqused_k,    max_seqlen_q, max_seqlen_k};
}

}  // namespace selfattn
