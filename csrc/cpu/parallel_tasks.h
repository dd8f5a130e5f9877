// Runs tasks [0, count) on the intra-op threads, each thread taking its next
// share when it is done with one: large shares first, smaller ones as the
// tasks run out (guided scheduling). at::parallel_for gives each thread a
// fixed share, and on a shared machine one core may run slower than the
// other: in one profile of a bfloat16 forward on the 2-vCPU development
// machine, the faster thread spent more than a quarter of its time waiting
// for the slower one. Consecutive tasks
// stay together in a share, so a thread still runs the tiles of a head one
// after another (and packs its keys once).
//
// make_state() builds a thread's scratch once; run(state, task) runs one
// task. Every task writes outputs of its own, so the result does not depend
// on which thread ran it.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace selfattn::cpu {

template <typename MakeState, typename Run>
void parallel_tasks(int64_t count, MakeState make_state, Run run) {
  if (count <= 0) return;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (;;) {
      int64_t first = next.load(std::memory_order_relaxed), size = 0;
      do {
        if (first >= count) return;
        size = std::max<int64_t>(1, (count - first) / (2 * workers));
      } while (!next.compare_exchange_weak(first, first + size, std::memory_order_relaxed));
      for (int64_t task = first; task < std::min(count, first + size); ++task) run(state, task);
    }
  });
}

}  // namespace selfattn::cpu
