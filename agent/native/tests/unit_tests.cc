// Runs every registered TEST; see unit_tests.h.
#include "unit_tests.h"

#include <cstdio>
#include <cstring>
#include <exception>

namespace unit {

std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

void fail(const char* file, int line, const std::string& what) {
  throw CheckFailed(std::string(file) + ":" + std::to_string(line) + ": " + what);
}

}  // namespace unit

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : "";
  int passed = 0;
  int failed = 0;
  for (const unit::Case& test : unit::registry()) {
    if (std::strstr(test.name, filter) == nullptr) continue;
    try {
      test.body();
      ++passed;
    } catch (const unit::CheckFailed& failure) {
      ++failed;
      std::printf("FAIL %s\n  %s\n", test.name, failure.what());
    } catch (const std::exception& error) {
      ++failed;
      std::printf("FAIL %s\n  unexpected exception: %s\n", test.name, error.what());
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 && passed > 0 ? 0 : 1;
}
