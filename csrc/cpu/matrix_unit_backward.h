// The backward of bfloat16 attention on the CPU's matrix units: all five
// products (S = Q·Kᵀ, dP = dO·Vᵀ, dQ = dS·K, dKᵀ = Qᵀ·dS and dVᵀ = dOᵀ·P) in
// bfloat16 with float accumulation; P, dP and dS are float between the
// products. The row statistics
// (the normaliser of P and D) are those of the float kernel
// (backward_rows.h), so a row's dS still sums to 0 up to float rounding.
#pragma once

#include "common/attention_params.h"

namespace selfattn::cpu {

// Whether matrix_unit_backward serves this call: bfloat16 with even head
// dims on a CPU with matrix units, without a mask, dropout, softcap, ALiBi,
// packed sequences or a paged cache, and with a positive scale.
bool matrix_unit_backward_applies(const AttentionBackwardParams& bp);

// Writes grad_q, grad_k and grad_v (and bp.delta and bp.row_scale).
void matrix_unit_backward(const AttentionBackwardParams& bp);

}  // namespace selfattn::cpu
