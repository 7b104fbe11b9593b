// A deliberately tiny test harness for the library's pure parts, so the unit
// tests need nothing beyond a C++17 compiler (no gtest download).
//
//   TEST(half_rounds_ties_to_even) { CHECK_EQ(float_to_half(1.0f), 0x3C00); }
//
// Each TEST registers itself; unit_tests.cc runs them all (or those whose
// name contains argv[1]) and exits non-zero if any check failed.
#pragma once

#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace unit {

struct Case {
  const char* name;
  void (*body)();
};

std::vector<Case>& registry();

struct Registration {
  Registration(const char* name, void (*body)()) { registry().push_back(Case{name, body}); }
};

// Thrown by a failed check; ends that test, not the run.
struct CheckFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const char* file, int line, const std::string& what);

template <typename T, typename = void>
struct is_streamable : std::false_type {};
template <typename T>
struct is_streamable<
    T, std::void_t<decltype(std::declval<std::ostream&>() << std::declval<const T&>())>>
    : std::true_type {};

// A value as text for a failure message.
template <typename T>
std::string show(const T& value) {
  std::ostringstream out;
  if constexpr (std::is_enum_v<T>) {
    out << "enum " << static_cast<long long>(value);
  } else if constexpr (std::is_integral_v<T> && sizeof(T) <= 2) {
    out << static_cast<long>(value) << " (0x" << std::hex << static_cast<unsigned long>(value)
        << ")";
  } else if constexpr (is_streamable<T>::value) {
    out << value;
  } else {
    out << "[";
    const char* separator = "";
    for (const auto& item : value) {
      out << separator << show(item);
      separator = ", ";
    }
    out << "]";
  }
  return out.str();
}

}  // namespace unit

#define TEST(name)                                                          \
  static void test_##name();                                                \
  static const unit::Registration registration_##name(#name, &test_##name); \
  static void test_##name()

#define CHECK(condition)                                                       \
  do {                                                                         \
    if (!(condition)) unit::fail(__FILE__, __LINE__, "CHECK(" #condition ")"); \
  } while (0)

#define CHECK_EQ(actual, expected)                                                     \
  do {                                                                                 \
    const auto& actual_value = (actual);                                               \
    const auto& expected_value = (expected);                                           \
    if (!(actual_value == expected_value)) {                                           \
      unit::fail(__FILE__, __LINE__,                                                   \
                 "CHECK_EQ(" #actual ", " #expected "): " + unit::show(actual_value) + \
                     " != " + unit::show(expected_value));                             \
    }                                                                                  \
  } while (0)

// The statement must throw `type` with `fragment` in its message.
#define CHECK_THROWS(statement, type, fragment)                                                \
  do {                                                                                         \
    bool thrown = false;                                                                       \
    try {                                                                                      \
      statement;                                                                               \
    } catch (const type& error) {                                                              \
      thrown = true;                                                                           \
      if (std::string(error.what()).find(fragment) == std::string::npos) {                     \
        unit::fail(                                                                            \
            __FILE__, __LINE__,                                                                \
            std::string(#statement " threw without \"") + (fragment) + "\": " + error.what()); \
      }                                                                                        \
    }                                                                                          \
    if (!thrown) unit::fail(__FILE__, __LINE__, #statement " did not throw " #type);           \
  } while (0)
