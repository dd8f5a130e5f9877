// The keys [col0, col0 + cols) of a sequence as runs of rows that follow one
// another in the views of k and v: one run, unless the cache is paged
// (AttentionParams::block_table), where each block holds a run of its own.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/attention_params.h"

namespace selfattn::cpu {

struct KeyRun {
  int64_t batch, row;    // where the run starts in the views of k and v
  int64_t first, count;  // its columns: first counted from col0, and how many
};

template <typename Visit>
void for_each_key_run(const AttentionParams& p, int64_t b, int64_t col0, int64_t cols, Visit&& visit) {
  if (p.block_table == nullptr) return visit(KeyRun{b, col0, 0, cols});
  for (int64_t j = col0; j < col0 + cols;) {
    const int64_t row = j % p.block_size;
    const int64_t count = std::min(col0 + cols - j, p.block_size - row);
    visit(KeyRun{p.block_table[b * p.block_table_stride + j / p.block_size], row, j - col0, count});
    j += count;
  }
}

}  // namespace selfattn::cpu
