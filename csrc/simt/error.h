// Errors and the source locations the messages name.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace simt {

// Every misuse the emulator detects, and every exception thrown by kernel code, reaches the host
// as a throw from the launch call. Kernel exceptions keep their own type.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where a thread waits. Device functions take it as a defaulted last parameter so that
// __builtin_FILE/LINE name the kernel's call site, not the emulator.
struct Site {
  const char* file = "?";
  int line = 0;
  static Site here(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return {file, line};
  }
  bool operator==(const Site& o) const {
    return line == o.line && (file == o.file || std::strcmp(file, o.file) == 0);
  }
  bool operator!=(const Site& o) const { return !(*this == o); }
  std::string str() const { return std::string(file) + ":" + std::to_string(line); }
};

namespace detail {

// "0-31, 40, 64-95": sorted ids as ranges, so a message about 256 threads stays readable.
inline std::string id_ranges(const std::vector<uint64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    s += std::to_string(ids[i]);
    if (j > i) s += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return s;
}

inline std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

}  // namespace detail
}  // namespace simt
