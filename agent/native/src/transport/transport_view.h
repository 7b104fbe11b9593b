// A subgroup of a transport's ranks seen as a transport of its own.
//
// The hierarchical allreduce runs the ordinary ring on two kinds of subgroup
// (the ranks of one node; the ranks with the same place on every node). A view
// renumbers the members 0..k-1 in the order given and hands out the parent's
// connections, so the ring, tree and star engines run on a subgroup unchanged.
// Connections keep their real peer ranks, so messages name the real ranks.
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "core/errors.h"
#include "transport/transport.h"

namespace adaptrain::collective {

class TransportView : public Transport {
 public:
  // `members`: ranks of `base`, this rank among them; the view's rank i is members[i].
  TransportView(Transport& base, std::vector<int> members)
      : base_(base), members_(std::move(members)) {
    const auto self = std::find(members_.begin(), members_.end(), base.rank());
    if (self == members_.end()) {
      throw InvalidArgumentError("a transport view must include this rank (internal error)");
    }
    rank_ = static_cast<int>(self - members_.begin());
  }

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  Connection& connection(int peer) override {
    if (peer < 0 || peer >= size()) {
      throw IoError("no connection to view rank " + std::to_string(peer) + " (internal error)");
    }
    return base_.connection(members_[static_cast<size_t>(peer)]);
  }
  bool has_connection(int peer) const override {
    return peer >= 0 && peer < size() && base_.has_connection(members_[static_cast<size_t>(peer)]);
  }
  void wait(const WaitRequest* requests, size_t count, const Deadline& deadline,
            int spin_us) override {
    base_.wait(requests, count, deadline, spin_us);
  }
  void shutdown() override { base_.shutdown(); }

 private:
  Transport& base_;
  std::vector<int> members_;
  int rank_ = 0;
};

}  // namespace adaptrain::collective
