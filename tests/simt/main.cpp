#include <cstdio>
#include <cstring>
#include <exception>

#include "harness.h"

int main(int argc, char** argv) {
  auto& cases = simt_test::registry();
  if (argc == 2 && std::strcmp(argv[1], "--list") == 0) {
    for (auto& [name, fn] : cases) std::printf("%s\n", name.c_str());
    return 0;
  }
  if (argc != 2 || cases.count(argv[1]) == 0) {
    std::fprintf(stderr, "usage: %s --list | <case>\n", argv[0]);
    return 2;
  }
  try {
    cases[argv[1]]();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL %s: %s\n", argv[1], e.what());
    return 1;
  }
  std::printf("PASS %s\n", argv[1]);
  return 0;
}
