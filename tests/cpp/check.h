// Minimal test harness for the engine's native tests (no external dependency):
// CHECK(cond) records a failure with file/line and goes on; main() returns the
// number of failures, so CTest reports the test as failed.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace check {

inline int& failures() {
  static int n = 0;
  return n;
}

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& cases() {
  static std::vector<Case> c;
  return c;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { cases().push_back({name, std::move(fn)}); }
};

// PYAGG_TEST_FILTER=<substring>: run only the cases whose name contains it.
inline int run_all() {
  int failed_cases = 0;
  std::size_t ran = 0;
  const char* filter = std::getenv("PYAGG_TEST_FILTER");
  for (auto& c : cases()) {
    if (filter && *filter && !std::strstr(c.name, filter)) continue;
    ++ran;
    int before = failures();
    c.fn();
    bool ok = failures() == before;
    if (!ok) ++failed_cases;
    std::printf("[%s] %s\n", ok ? "  OK  " : " FAIL ", c.name);
  }
  std::printf("%zu passed, %d failed\n", ran - failed_cases, failed_cases);
  if (ran == 0) {  // an empty run is not a pass (a filter that matches no case)
    std::printf("no test case ran%s%s\n", filter && *filter ? " for PYAGG_TEST_FILTER=" : "",
                filter && *filter ? filter : "");
    return 5;
  }
  return failed_cases == 0 ? 0 : 1;
}

}  // namespace check

#define CHECK_CAT2(a, b) a##b
#define CHECK_CAT(a, b) CHECK_CAT2(a, b)
#define TEST_CASE(name)                                                         \
  static void CHECK_CAT(test_fn_, __LINE__)();                                  \
  static check::Register CHECK_CAT(test_reg_, __LINE__)(name, CHECK_CAT(test_fn_, __LINE__)); \
  static void CHECK_CAT(test_fn_, __LINE__)()

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      ++check::failures();                                                      \
      std::printf("  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
    }                                                                           \
  } while (0)

#define CHECK_MSG(cond, msg)                                                    \
  do {                                                                          \
    if (!(cond)) {                                                              \
      ++check::failures();                                                      \
      std::printf("  %s:%d: CHECK failed: %s (%s)\n", __FILE__, __LINE__, #cond, \
                  std::string(msg).c_str());                                    \
    }                                                                           \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                   \
  do {                                                                          \
    double _a = (a), _b = (b), _t = (tol);                                      \
    if (!(std::fabs(_a - _b) <= _t)) {                                          \
      ++check::failures();                                                      \
      std::printf("  %s:%d: CHECK_NEAR failed: %s=%.17g vs %s=%.17g (tol %g)\n", \
                  __FILE__, __LINE__, #a, _a, #b, _b, _t);                      \
    }                                                                           \
  } while (0)

#define CHECK_MAIN() \
  int main() { return check::run_all(); }
