// A minimal test harness for the emulator's C++ tests: cases register themselves by name; the
// binary runs one case per invocation (`simt_tests <case>`, `simt_tests --list`) so that pytest
// can parametrize over them and a crash fails only its own case.
#pragma once

#include <cstdio>
#include <initializer_list>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include "kernels/device_compat.cuh"

namespace simt_test {

using CaseFn = void (*)();

inline std::map<std::string, CaseFn>& registry() {
  static std::map<std::string, CaseFn> cases;
  return cases;
}

struct Register {
  Register(const char* name, CaseFn fn) { registry()[name] = fn; }
};

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class A, class B>
void check_eq(const A& a, const B& b, const char* expr, const char* file, int line) {
  if (a == b) return;
  std::ostringstream os;
  os << file << ":" << line << ": CHECK_EQ(" << expr << "): " << a << " != " << b;
  throw Failure(os.str());
}

// Runs f, which must throw simt::Error mentioning every needle; returns the message.
template <class F>
std::string expect_error(F f, std::initializer_list<const char*> needles, const char* file,
                         int line) {
  std::string msg;
  try {
    f();
  } catch (const simt::Error& e) {
    msg = e.what();
  }
  if (msg.empty())
    throw Failure(std::string(file) + ":" + std::to_string(line) + ": expected a simt::Error");
  std::printf("expected error: %s\n", msg.c_str());
  for (const char* n : needles)
    if (msg.find(n) == std::string::npos)
      throw Failure(std::string(file) + ":" + std::to_string(line) + ": error lacks '" + n +
                    "': " + msg);
  return msg;
}

}  // namespace simt_test

#define SIMT_CASE(name)                                             \
  static void name();                                               \
  static ::simt_test::Register register_##name(#name, &name);       \
  static void name()

#define CHECK(cond)                                                                       \
  do {                                                                                    \
    if (!(cond))                                                                          \
      throw ::simt_test::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                                 ": CHECK(" #cond ") failed");                            \
  } while (0)

#define CHECK_EQ(a, b) ::simt_test::check_eq((a), (b), #a ", " #b, __FILE__, __LINE__)

#define EXPECT_ERROR(stmt, ...) \
  ::simt_test::expect_error([&] { stmt; }, {__VA_ARGS__}, __FILE__, __LINE__)

// Every schedule the main suite uses.
constexpr simt::Order kOrders[] = {simt::Order::Forward, simt::Order::Reverse,
                                   simt::Order::Random};
