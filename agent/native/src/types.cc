#include "types.h"

#include "errors.h"

namespace adaptrain::collective {

size_t element_size(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return sizeof(float);
  }
  throw InvalidArgumentError("unknown data type");
}

const char* name_of(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return "float32";
  }
  return "unknown";
}

const char* name_of(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMean:
      return "mean";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kMax:
      return "max";
  }
  return "unknown";
}

ReduceOp parse_reduce_op(const std::string& name) {
  if (name == "sum") return ReduceOp::kSum;
  if (name == "mean") return ReduceOp::kMean;
  if (name == "min") return ReduceOp::kMin;
  if (name == "max") return ReduceOp::kMax;
  throw InvalidArgumentError("op=\"" + name + "\" is not a reduction: use one of \"sum\", \"mean\", \"min\", \"max\"");
}

}  // namespace adaptrain::collective
