// The C++ API (torch_selfattn/attention.h) without Python: forward and
// backward through C++ autograd against torch::scaled_dot_product_attention,
// in float64 so that the two agree to rounding. Prints one line per check and
// exits 1 if any fails.
#include <torch/torch.h>
#include <torch_selfattn/attention.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

constexpr double kTolerance = 1e-10;
int failures = 0;

void check(const std::string& name, bool ok, const std::string& detail = "") {
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  failures += ok ? 0 : 1;
}

void check_close(const std::string& name, const torch::Tensor& ours, const torch::Tensor& reference) {
  const bool same_shape = ours.sizes() == reference.sizes();
  const double error = same_shape ? (ours - reference).abs().max().item<double>() : -1.0;
  char detail[64];
  std::snprintf(detail, sizeof detail, "max error %.1e", error);
  check(name, same_shape && error <= kTolerance, same_shape ? detail : "shape mismatch");
}

torch::Tensor input(std::vector<int64_t> shape) {
  return torch::randn(shape, torch::kFloat64).requires_grad_();
}

using Attention = std::function<torch::Tensor(const std::vector<torch::Tensor>&)>;

// Forward and the gradients of every input, ours against the reference, on
// the same inputs and the same upstream gradient.
void compare(const std::string& name, const std::vector<torch::Tensor>& inputs, const Attention& ours,
             const Attention& reference) {
  const torch::Tensor out = ours(inputs);
  const torch::Tensor expected = reference(inputs);
  check_close(name + " forward", out, expected);
  const torch::Tensor grad_out = torch::randn_like(expected);
  const auto grads = torch::autograd::grad({out}, inputs, {grad_out});
  const auto expected_grads = torch::autograd::grad({expected}, inputs, {grad_out});
  for (size_t i = 0; i < inputs.size(); ++i) {
    check_close(name + " grad of input " + std::to_string(i), grads[i], expected_grads[i]);
  }
}

// Query i sees key j when -right <= i + shift - j <= left.
torch::Tensor window_mask(int64_t L, int64_t S, int64_t left, int64_t right, int64_t shift) {
  const auto distance = torch::arange(L).unsqueeze(1) + shift - torch::arange(S).unsqueeze(0);
  return (distance <= left) & (distance >= -right);
}

}  // namespace

int main() {
  torch::manual_seed(0);
  using torch_selfattn::CausalAlignment;

  compare("sdpa with a float mask that gets a gradient",
          {input({2, 3, 37, 16}), input({2, 3, 45, 16}), input({2, 3, 45, 24}), input({37, 45})},
          [](const auto& t) { return torch_selfattn::scaled_dot_product_attention(t[0], t[1], t[2], t[3]); },
          [](const auto& t) { return torch::scaled_dot_product_attention(t[0], t[1], t[2], t[3]); });

  compare("sdpa causal, grouped-query, scale 0.3",
          {input({2, 4, 33, 16}), input({2, 2, 33, 16}), input({2, 2, 33, 16})},
          [](const auto& t) {
            return torch_selfattn::scaled_dot_product_attention(t[0], t[1], t[2], std::nullopt, 0.0, true, 0.3, true);
          },
          [](const auto& t) {
            return torch::scaled_dot_product_attention(t[0], t[1], t[2], {}, 0.0, true, 0.3, true);
          });

  compare("sdpa with a bottom-right window (3, 1)", {input({1, 2, 20, 8}), input({1, 2, 29, 8}), input({1, 2, 29, 8})},
          [](const auto& t) {
            torch_selfattn::ScoreOptions options;
            options.window = torch_selfattn::Window{3, 1};
            options.causal_alignment = CausalAlignment::BottomRight;
            return torch_selfattn::scaled_dot_product_attention(t[0], t[1], t[2], std::nullopt, 0.0, false,
                                                                std::nullopt, false, options);
          },
          [](const auto& t) {
            return torch::scaled_dot_product_attention(t[0], t[1], t[2], window_mask(20, 29, 3, 1, 29 - 20));
          });

  // Two sequences packed back to back: (5 queries, 7 keys) and (11, 4).
  const auto cu_q = torch::tensor({0, 5, 16}, torch::kInt32);
  const auto cu_k = torch::tensor({0, 7, 11}, torch::kInt32);
  compare("varlen, causal", {input({16, 4, 8}), input({11, 2, 8}), input({11, 2, 8})},
          [&](const auto& t) {
            return torch_selfattn::varlen_attention(t[0], t[1], t[2], cu_q, cu_k, 11, 7, 0.0, true);
          },
          [](const auto& t) {
            auto sequence = [&](int64_t q0, int64_t q1, int64_t k0, int64_t k1) {
              auto heads_first = [](const torch::Tensor& x) { return x.transpose(0, 1); };
              return heads_first(torch::scaled_dot_product_attention(
                  heads_first(t[0].slice(0, q0, q1)), heads_first(t[1].slice(0, k0, k1)),
                  heads_first(t[2].slice(0, k0, k1)), {}, 0.0, true, std::nullopt, true));
            };
            return torch::cat({sequence(0, 5, 0, 7), sequence(5, 16, 7, 11)});
          });

  // One new token per sequence against caches of 9 rows, of which sequence b uses the first 6 and 9.
  const auto cache_seqlens = torch::tensor({6, 9}, torch::kInt32);
  compare("kv_cache, one decoding step", {input({2, 4, 1, 8}), input({2, 2, 9, 8}), input({2, 2, 9, 8})},
          [&](const auto& t) { return torch_selfattn::kv_cache_attention(t[0], t[1], t[2], cache_seqlens); },
          [](const auto& t) {
            std::vector<torch::Tensor> rows;
            for (int64_t b = 0; b < 2; ++b) {
              const int64_t used = b == 0 ? 6 : 9;
              rows.push_back(torch::scaled_dot_product_attention(
                  t[0].slice(0, b, b + 1), t[1].slice(0, b, b + 1).slice(2, 0, used),
                  t[2].slice(0, b, b + 1).slice(2, 0, used), {}, 0.0, false, std::nullopt, true));
            }
            return torch::cat(rows);
          });

  // Bad input: the library's error, as a c10::Error, naming the argument.
  const std::string bad_input = "a key whose last dim differs from the query's raises";
  try {
    torch_selfattn::scaled_dot_product_attention(torch::randn({2, 4, 8}), torch::randn({2, 4, 16}),
                                                 torch::randn({2, 4, 16}));
    check(bad_input, false, "no error");
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    check(bad_input, message.find("key's last dim must equal query's") != std::string::npos, message);
  }

  std::printf("%s\n", failures == 0 ? "all checks passed" : (std::to_string(failures) + " check(s) FAILED").c_str());
  return failures == 0 ? 0 : 1;
}
