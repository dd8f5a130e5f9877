// The keyword-only options that both core ops take, declared once: the
// list below generates the schema text (csrc/ops.cpp), the AttentionOptions
// struct that the code between the ops and the kernels passes instead of
// ten arguments, the ops' unpacked signatures (core_op_kernels.h), the calls
// through the dispatcher (op_calls.cpp); autograd nodes keep the gathered
// struct (api/autograd/saved_settings.h). A new option is one line here, its
// check (input_checks.cpp) and its translation for the kernels
// (kernel_params.cpp).
//
// What they mean (see csrc/common/attention_params.h for the exact rules):
//   window_left, window_right  a sliding window; -1 is no bound
//   bottom_right               align causal masks and windows to the
//                              bottom-right corner (S − L) instead of the top-left
//   alibi_slopes               (Hq) or (batch, Hq): adds −slope·|i + shift − j|
//   softcap                    > 0: scores become softcap·tanh(score / softcap)
//   cu_seqlens_q, cu_seqlens_k int32 offsets of packed sequences in a batch of one
//   seqused_k                  int32 per sequence: the keys of a cache it uses
//   max_seqlen_q, max_seqlen_k bounds of the packed sequences' lengths
//   block_table                int32 (batch, max_blocks): a paged cache, with
//                              seqused_k. key and value are then the cache's
//                              blocks, (num_blocks, H, block_size, dim), and
//                              key j of sequence b is row j % block_size of
//                              block block_table[b][j / block_size]
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <type_traits>

// X(C++ type, name, C++ default, schema type, schema default), in schema order.
#define SELFATTN_CORE_OPTIONS(X)                                                \
  X(int64_t, window_left, -1, "int", "-1")                                      \
  X(int64_t, window_right, -1, "int", "-1")                                     \
  X(bool, bottom_right, false, "bool", "False")                                 \
  X(std::optional<at::Tensor>, alibi_slopes, std::nullopt, "Tensor?", "None")   \
  X(double, softcap, 0.0, "float", "0.0")                                       \
  X(std::optional<at::Tensor>, cu_seqlens_q, std::nullopt, "Tensor?", "None")   \
  X(std::optional<at::Tensor>, cu_seqlens_k, std::nullopt, "Tensor?", "None")   \
  X(std::optional<at::Tensor>, seqused_k, std::nullopt, "Tensor?", "None")      \
  X(int64_t, max_seqlen_q, -1, "int", "-1")                                     \
  X(int64_t, max_seqlen_k, -1, "int", "-1")                                     \
  X(std::optional<at::Tensor>, block_table, std::nullopt, "Tensor?", "None")

// Expansions of the list. Each option as...
// ...schema text: ", int window_left=-1" (a string literal, concatenated).
#define SELFATTN_OPTION_SCHEMA(type, name, value, schema_type, schema_value) ", " schema_type " " #name "=" schema_value
// ...a member of AttentionOptions, with its default.
#define SELFATTN_OPTION_MEMBER(type, name, value, schema_type, schema_value) type name = value;
// ...a parameter of an op kernel, as the dispatcher passes it.
#define SELFATTN_OPTION_PARAMETER(type, name, value, schema_type, schema_value) \
  , ::selfattn::OptionParameter<type> name
// ...the parameter of that name, gathered into an AttentionOptions{...}.
#define SELFATTN_OPTION_NAME(type, name, value, schema_type, schema_value) name,
// ...an argument of a call, taken from an AttentionOptions named `options`.
#define SELFATTN_OPTION_FROM_OPTIONS(type, name, value, schema_type, schema_value) , options.name

namespace selfattn {

// Scalars by value, tensors by const reference, as the dispatcher passes them.
template <typename T>
using OptionParameter = std::conditional_t<std::is_scalar_v<T>, T, const T&>;

struct AttentionOptions {
  SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_MEMBER)

  bool has_sequences() const { return cu_seqlens_q.has_value() || seqused_k.has_value(); }
  // The keys a sequence can have: key's length, or all its blocks' rows.
  int64_t key_capacity(const at::Tensor& key) const {
    return block_table.has_value() ? block_table->size(1) * key.size(2) : key.size(2);
  }
};

}  // namespace selfattn
