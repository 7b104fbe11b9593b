#include "core/types.h"

#include "core/errors.h"

namespace adaptrain::collective {

size_t element_size(DataType type) {
  switch (type) {
    case DataType::kFloat32:
    case DataType::kInt32:
      return 4;
    case DataType::kFloat64:
    case DataType::kInt64:
      return 8;
    case DataType::kFloat16:
      return 2;
    case DataType::kUint8:
      return 1;
  }
  throw InvalidArgumentError("unknown data type " + std::to_string(static_cast<uint32_t>(type)));
}

const char* name_of(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return "float32";
    case DataType::kFloat64:
      return "float64";
    case DataType::kFloat16:
      return "float16";
    case DataType::kInt32:
      return "int32";
    case DataType::kInt64:
      return "int64";
    case DataType::kUint8:
      return "uint8";
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
    case ReduceOp::kBitOr:
      return "bitwise-or";
  }
  return "unknown";
}

bool is_integer(DataType type) {
  return type == DataType::kInt32 || type == DataType::kInt64 || type == DataType::kUint8;
}

ReduceOp parse_reduce_op(const std::string& name) {
  if (name == "sum") return ReduceOp::kSum;
  if (name == "mean") return ReduceOp::kMean;
  if (name == "min") return ReduceOp::kMin;
  if (name == "max") return ReduceOp::kMax;
  throw InvalidArgumentError(
      "op=\"" + name + "\" is not a reduction: use one of \"sum\", \"mean\", \"min\", \"max\"");
}

void check_op_supported(DataType type, ReduceOp op) {
  (void)element_size(type);
  if (op == ReduceOp::kMean && is_integer(type)) {
    throw InvalidArgumentError(
        std::string("op=\"mean\" is not defined for ") + name_of(type) +
        " (an integer mean would truncate): use op=\"sum\" and divide, or convert to a "
        "float type first");
  }
  if (op == ReduceOp::kBitOr && type != DataType::kUint8) {
    throw InvalidArgumentError("bitwise-or is internal and only defined for uint8");
  }
}

}  // namespace adaptrain::collective
