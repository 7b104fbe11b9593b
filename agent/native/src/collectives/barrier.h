// Ring barrier; see barrier.cc.
#pragma once

#include <chrono>
#include <cstdint>

#include "transport/transport.h"

namespace adaptrain::collective {

struct BarrierOptions {
  uint64_t sequence = 0;
  std::chrono::milliseconds timeout{60000};  // longest time without progress
  int spin_us = 0;                           // see Transport::wait
};

void ring_barrier(Transport& transport, const BarrierOptions& options);

}  // namespace adaptrain::collective
