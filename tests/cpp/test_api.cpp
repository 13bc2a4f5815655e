// Engine API: rule parsing, parameter validation and bounds (messages name the
// offending values), size checks. Kernel correctness lives in test_<family>.cpp.
#include <algorithm>
#include <string>

#include "check.h"
#include "pyagg/rules.h"

using namespace pyagg;

static bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

TEST_CASE("unknown rule lists the known ones") {
  RuleConfig c;
  Status st = make_rule("kurm", 1, {}, &c);
  CHECK(!st.ok());
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK_MSG(contains(st.message(), "kurm") && contains(st.message(), "krum") && contains(st.message(), "bulyan"),
            st.message());
}

TEST_CASE("krum bound message names n, f and the bound") {
  RuleConfig c;
  CHECK(make_rule("krum", 2, {}, &c).ok());
  Status st = check_rule_input(c, 6, 10);
  CHECK_MSG(st.message() == "krum needs n >= 2f+3, got n=6, f=2", st.message());
  CHECK(check_rule_input(c, 7, 10).ok());
}

TEST_CASE("every rule refuses n below its bound and accepts it at the bound") {
  for (const auto& info : rule_table()) {
    for (std::size_t f : {0, 1, 3}) {
      RuleConfig c;
      // zeroing's tau has no default (rules_next.md): the one required parameter.
      std::vector<NamedParam> params;
      if (std::string(info.name) == "zeroing") params = {{"tau", 1.0}};
      CHECK(make_rule(info.name, std::int64_t(f), params, &c).ok());
      std::size_t lo = std::max(info.min_n(f), f);  // every rule also needs f <= n
      CHECK_MSG(check_rule_input(c, lo, 5).ok(), std::string(info.name) + " at bound f=" + std::to_string(f));
      if (lo > 1) {
        Status st = check_rule_input(c, lo - 1, 5);
        const std::string want = lo > info.min_n(f) ? "f <= n" : info.bound;
        CHECK_MSG(!st.ok() && contains(st.message(), want), st.message());
      }
    }
  }
}

TEST_CASE("parameter validation") {
  RuleConfig c;
  CHECK(!make_rule("krum", -1, {}, &c).ok());
  Status st = make_rule("krum", 1, {{"m", 3}}, &c);
  CHECK_MSG(!st.ok() && contains(st.message(), "'m'"), st.message());
  CHECK(!make_rule("multi-krum", 1, {{"m", 0}}, &c).ok());
  CHECK(!make_rule("multi-krum", 1, {{"m", 2.5}}, &c).ok());
  CHECK(!make_rule("multi-krum", 1, {{"m", 2}, {"m", 3}}, &c).ok());
  CHECK(make_rule("multi-krum", 1, {{"m", 6}}, &c).ok());
  st = check_rule_input(c, 7, 3);  // m <= n-f = 6
  CHECK_MSG(st.ok(), st.message());
  CHECK(!check_rule_input(c, 6, 3).ok());
  CHECK(!make_rule("geometric-median", 0, {{"nu", 0}}, &c).ok());
  CHECK(!make_rule("geometric-median", 0, {{"tol", -1}}, &c).ok());
  CHECK(!make_rule("centered-clipping", 0, {{"tau", -1}}, &c).ok());
  CHECK(!make_rule("centered-clipping", 0, {{"L", 0}}, &c).ok());
  CHECK(!make_rule("averaged-median", 0, {{"beta", 1.0 / 0.0}}, &c).ok());
  // bulyan-multikrum, n=7, f=1: theta = n-2f-2 = 3, m in [3, n-f-2 = 4]
  CHECK(make_rule("bulyan-multikrum", 1, {{"m", 5}}, &c).ok());
  CHECK(!check_rule_input(c, 7, 3).ok());
  CHECK(make_rule("bulyan-multikrum", 1, {{"m", 3}}, &c).ok());
  CHECK(check_rule_input(c, 7, 3).ok());
}

TEST_CASE("mda refuses too many subsets") {
  RuleConfig c;
  CHECK(make_rule("mda", 10, {{"max_subsets", 1000}}, &c).ok());
  Status st = check_rule_input(c, 30, 4);
  CHECK_MSG(!st.ok() && contains(st.message(), "C(30, 10)"), st.message());
}

TEST_CASE("size checks") {
  RuleConfig c;
  CHECK(make_rule("average", 0, {}, &c).ok());
  Status st = check_rule_input(c, 3, 0);
  CHECK_MSG(!st.ok() && contains(st.message(), "d=0"), st.message());
  CHECK(!check_rule_input(c, 0, 3).ok());
  CHECK(!check_rule_input(c, std::size_t(1) << 40, std::size_t(1) << 40).ok());
}

TEST_CASE("pre-aggregators") {
  PreConfig p;
  CHECK(!make_pre("nmn", 1, {}, &p).ok());
  CHECK(make_pre("bucketing", 1, {{"s", 3}}, &p).ok());
  CHECK(pre_output_rows(p, 10) == 4);
  CHECK(!make_pre("bucketing", 1, {{"s", 0}}, &p).ok());
  CHECK(make_pre("clipping", 1, {{"tau", 0}}, &p).ok());
  CHECK(!make_pre("clipping", 1, {{"tau", -2}}, &p).ok());
  CHECK(make_pre("nnm", 3, {}, &p).ok());
  CHECK(!check_pre_input(p, 3, 4).ok());
}

CHECK_MAIN()
