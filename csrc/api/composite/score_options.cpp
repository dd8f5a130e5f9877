#include "api/composite/score_options.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace selfattn {

AttentionOptions score_options(const char* op, at::OptionalIntArrayRef window, std::string_view causal_alignment,
                               const std::optional<at::Tensor>& alibi_slopes, std::optional<double> softcap) {
  AttentionOptions o;
  if (window.has_value()) {
    TORCH_CHECK(window->size() == 2 && (*window)[0] >= -1 && (*window)[1] >= -1, op,
                ": window must be (left, right), each >= 0 or -1 for no bound, got ", *window);
    o.window_left = (*window)[0];
    o.window_right = (*window)[1];
  }
  TORCH_CHECK(causal_alignment == "top_left" || causal_alignment == "bottom_right", op,
              ": causal_alignment must be \"top_left\" or \"bottom_right\", got \"", causal_alignment, "\"");
  o.bottom_right = causal_alignment == "bottom_right";
  if (softcap.has_value()) {
    TORCH_CHECK(*softcap >= 0.0 && std::isfinite(*softcap), op,
                ": softcap must be a finite number >= 0 (0 or None: no cap), got ", *softcap);
    o.softcap = *softcap;
  }
  if (alibi_slopes.has_value()) {
    TORCH_CHECK(alibi_slopes->is_floating_point(), op, ": alibi_slopes must be a floating-point tensor, got ",
                alibi_slopes->scalar_type());
    TORCH_CHECK(!alibi_slopes->requires_grad(), op,
                ": alibi_slopes gets no gradient, but it requires grad; pass alibi_slopes.detach()");
    o.alibi_slopes = alibi_slopes;
  }
  return o;
}

}  // namespace selfattn
