// Forward-mode AD of attention_forward (torch.func.jvp, torch.autograd.forward_ad):
// the tangents of the output and of the logsumexp, from the tangents of its
// inputs,
//   dO = dP·V + P·dV,   dP = P ∘ (dS − rowsum(P ∘ dS)),   dlse = rowsum(P ∘ dS),
// with dS the tangent of the scores. P is formed whole, L×S per head, with
// ATen ops, as PyTorch's math path forms it; the fused kernels have no
// forward-mode counterpart.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "api/autograd/saved_settings.h"

namespace selfattn {

// Tangents of (query, key, value, attn_mask); an undefined one is zero.
struct InputTangents {
  at::Tensor query, key, value, attn_mask;
};

struct OutputTangents {
  at::Tensor output, logsumexp;
};

// The primals are the 4-D core-op inputs. Packed sequences, KV caches and
// dropout raise NotImplementedError.
OutputTangents attention_forward_tangent(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                     const std::optional<at::Tensor>& attn_mask, const CallSettings& settings,
                                     const InputTangents& tangents);

}  // namespace selfattn
