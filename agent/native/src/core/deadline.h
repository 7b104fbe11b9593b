// Time limits for blocking calls.
//
// Two flavours, because the two kinds of waiting need different limits:
// setting up connections has an absolute budget (the whole rendezvous must
// finish within timeout_s), while a collective has an inactivity budget (it
// fails only when *nothing* moved for timeout_s), so a 10 GB allreduce over a
// slow link is not cut off just because it takes longer than the timeout.
#pragma once

#include <chrono>
#include <climits>
#include <cstdio>
#include <string>

namespace adaptrain::collective {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  static Deadline absolute(std::chrono::milliseconds budget) { return Deadline(budget, false); }
  static Deadline inactivity(std::chrono::milliseconds budget) { return Deadline(budget, true); }

  // Bytes moved: an inactivity deadline starts counting again.
  void note_progress() {
    if (sliding_) expires_at_ = Clock::now() + budget_;
  }

  bool expired() const { return Clock::now() >= expires_at_; }

  // Milliseconds left, rounded up so that poll() never wakes just before the
  // deadline and spins; 0 once expired.
  int remaining_ms() const {
    auto left = expires_at_ - Clock::now();
    if (left <= Clock::duration::zero()) return 0;
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
    return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
  }

  // "5.0 s" for messages.
  std::string budget_text() const {
    char text[32];
    std::snprintf(text, sizeof(text), "%.1f s", budget_.count() / 1000.0);
    return text;
  }

 private:
  Deadline(std::chrono::milliseconds budget, bool sliding)
      : budget_(budget), sliding_(sliding), expires_at_(Clock::now() + budget) {}

  std::chrono::milliseconds budget_;
  bool sliding_;
  Clock::time_point expires_at_;
};

}  // namespace adaptrain::collective
