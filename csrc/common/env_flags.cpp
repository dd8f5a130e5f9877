#include "common/env_flags.h"

#include <cstdlib>
#include <cstring>

namespace selfattn {

bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::strcmp(value, "1") == 0;
}

}  // namespace selfattn
