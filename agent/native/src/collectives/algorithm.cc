#include "collectives/algorithm.h"

#include "core/errors.h"

namespace adaptrain::collective {

const char* name_of(Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::kDefault:
      return "default";
    case Algorithm::kAuto:
      return "auto";
    case Algorithm::kRing:
      return "ring";
    case Algorithm::kTree:
      return "tree";
    case Algorithm::kStar:
      return "star";
    case Algorithm::kHierarchical:
      return "hierarchical";
  }
  return "unknown";
}

Algorithm parse_algorithm(const std::string& name) {
  if (name == "auto") return Algorithm::kAuto;
  if (name == "ring") return Algorithm::kRing;
  if (name == "tree") return Algorithm::kTree;
  if (name == "star") return Algorithm::kStar;
  if (name == "hierarchical") return Algorithm::kHierarchical;
  throw InvalidArgumentError(
      "algorithm=\"" + name +
      "\" is not known: use one of \"auto\", \"ring\", \"tree\", \"star\", \"hierarchical\"");
}

Algorithm choose_algorithm(Algorithm requested, size_t bytes, size_t count, int size,
                           const Tunables& tunables) {
  const bool ring_fits = count >= static_cast<size_t>(size);
  switch (requested) {
    case Algorithm::kRing:
    case Algorithm::kHierarchical:
      return ring_fits ? Algorithm::kRing : Algorithm::kTree;
    case Algorithm::kTree:
    case Algorithm::kStar:
      return requested;
    case Algorithm::kAuto:
      if (ring_fits && bytes >= tunables.auto_ring_min_bytes) return Algorithm::kRing;
      return static_cast<size_t>(size) <= tunables.auto_star_max_ranks ? Algorithm::kStar
                                                                       : Algorithm::kTree;
    case Algorithm::kDefault:
      break;
  }
  throw InvalidArgumentError("choose_algorithm needs a concrete request (internal error)");
}

}  // namespace adaptrain::collective
