#include "bundle.h"

#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>

namespace fs = std::filesystem;
using nlohmann::json;

namespace bundle {

// --- element types ------------------------------------------------------------------------------------------

std::string type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    default: return "onnx type " + std::to_string(static_cast<int>(type));
  }
}

size_t type_size(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return 1;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return 8;
    default: return 0;
  }
}

// Element i of a buffer of T (unaligned: a copy, not a cast), as a double.
template <typename T>
static double load(const uint8_t* data, size_t i) {
  T v;
  std::memcpy(&v, data + sizeof(T) * i, sizeof(T));
  return static_cast<double>(v);
}

// Element i of a buffer of `type`, as a double (int64 beyond 2^53 rounds, as JavaScript's Number() does).
static double element(const uint8_t* data, ONNXTensorElementDataType type, size_t i) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return data[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: {
      uint16_t bits;
      std::memcpy(&bits, data + 2 * i, 2);
      return Ort::Float16_t::FromBits(bits).ToFloat();
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return load<float>(data, i);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return load<int32_t>(data, i);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return load<double>(data, i);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return load<int64_t>(data, i);
    default: throw BundleError("cannot compare values of " + type_name(type));
  }
}

double element_value(const Tensor& t, size_t i) { return element(t.data.data(), t.type, i); }

int64_t Tensor::count() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

Ort::Value Tensor::view(const Ort::MemoryInfo& memory) {
  return Ort::Value::CreateTensor(memory, data.data(), data.size(), dims.data(), dims.size(), type);
}

// --- TensorProto ----------------------------------------------------------------------------------------------

namespace {

struct Reader {  // protobuf's wire format over one buffer
  const uint8_t* pos;
  const uint8_t* end;

  bool done() const { return pos >= end; }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= end) throw BundleError("truncated TensorProto");
      const uint8_t byte = *pos++;
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return value;
    }
    throw BundleError("malformed TensorProto: a varint longer than 10 bytes");
  }
  const uint8_t* take(uint64_t n) {
    if (n > static_cast<uint64_t>(end - pos)) throw BundleError("truncated TensorProto");
    const uint8_t* start = pos;
    pos += n;
    return start;
  }
};

// One field as the wire holds it: a varint's value, or the bytes of a fixed-width or length-delimited one.
struct Field {
  int number = 0;
  int wire = 0;
  uint64_t varint = 0;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

template <typename Visit>
void each_field(const std::string& bytes, Visit&& visit) {
  const auto* start = reinterpret_cast<const uint8_t*>(bytes.data());
  Reader r{start, start + bytes.size()};
  while (!r.done()) {
    const uint64_t key = r.varint();
    Field f;
    f.number = static_cast<int>(std::min<uint64_t>(key >> 3, 1u << 29));
    f.wire = static_cast<int>(key & 7);
    if (f.wire == 0) {
      f.varint = r.varint();
    } else if (f.wire == 1 || f.wire == 5) {
      f.size = f.wire == 1 ? 8 : 4;
      f.data = r.take(f.size);
    } else if (f.wire == 2) {
      f.size = r.varint();
      f.data = r.take(f.size);
    } else {
      throw BundleError("unsupported protobuf wire type " + std::to_string(f.wire) + " in a TensorProto");
    }
    visit(f);
  }
}

// The repeated value fields, in the order Python and Node name them
enum Values { kFloat, kInt32, kString, kInt64, kDouble, kUint64, kFields };
const char* const kFieldNames[kFields] = {"float_data", "int32_data", "string_data", "int64_data", "double_data",
                                          "uint64_data"};

// Which value field a protobuf field number is, and how its values are laid out on the wire
int value_field(int number) {
  switch (number) {
    case 4: return kFloat;
    case 5: return kInt32;
    case 6: return kString;
    case 7: return kInt64;
    case 10: return kDouble;
    case 11: return kUint64;
    default: return -1;
  }
}

// Each value a field occurrence holds (packed or not), as its varint or its fixed-width bytes; none where the
// wire type is not the field's (protobuf then keeps it as an unknown field). A packed fixed-width field must hold
// whole values.
template <typename Visit>
void each_value(const Field& f, int which, Visit&& visit) {
  const int width = which == kFloat ? 4 : which == kDouble ? 8 : 0;
  if (which == kString) {
    if (f.wire == 2) visit(uint64_t{0}, f.data);
  } else if (width == 0) {  // varints: int32, int64, uint64
    if (f.wire == 0) {
      visit(f.varint, nullptr);
    } else if (f.wire == 2) {
      Reader packed{f.data, f.data + f.size};
      while (!packed.done()) visit(packed.varint(), nullptr);
    }
  } else if (f.wire == (width == 4 ? 5 : 1)) {
    visit(uint64_t{0}, f.data);
  } else if (f.wire == 2) {
    if (f.size % width) {
      throw BundleError(std::string("malformed TensorProto: packed ") + kFieldNames[which] + " of " +
                        std::to_string(f.size) + " bytes");
    }
    for (uint64_t k = 0; k < f.size; k += width) visit(uint64_t{0}, f.data + k);
  }
}

struct Element {
  const char* type;
  size_t size;
  int field;
  int64_t low, high;  // the range int32_data may hold
};

const Element* element_of(int32_t type) {
  static const std::map<int32_t, Element> kElements = {
      {1, {"float32", 4, kFloat, 0, 0}},     {2, {"uint8", 1, kInt32, 0, 255}},
      {7, {"int64", 8, kInt64, 0, 0}},       {9, {"bool", 1, kInt32, 0, 1}},
      {10, {"float16", 2, kInt32, 0, 0xffff}}, {11, {"float64", 8, kDouble, 0, 0}}};
  const auto found = kElements.find(type);
  return found == kElements.end() ? nullptr : &found->second;
}

const char* refused_type_name(int32_t type) {
  static const std::map<int32_t, const char*> kNames = {
      {3, "int8"}, {4, "uint16"}, {5, "int16"}, {6, "int32"}, {8, "string"}, {12, "uint32"}, {13, "uint64"},
      {14, "complex64"}, {15, "complex128"}, {16, "bfloat16"}, {17, "float8e4m3fn"}, {18, "float8e4m3fnuz"},
      {19, "float8e5m2"}, {20, "float8e5m2fnuz"}, {21, "uint4"}, {22, "int4"}, {23, "float4e2m1"}};
  const auto found = kNames.find(type);
  return found == kNames.end() ? nullptr : found->second;
}

std::string join(const std::vector<int64_t>& dims) {
  std::string out;
  for (size_t k = 0; k < dims.size(); ++k) out += (k ? "," : "") + std::to_string(dims[k]);
  return out;
}

}  // namespace

Tensor decode_tensor(const std::string& bytes) {
  // 1. Read what the message says, allocating nothing for its values: counts, and where raw_data lies.
  Tensor t;
  int32_t type = 0;
  bool segments = false, external = false;
  uint64_t location = 0;
  const uint8_t* raw = nullptr;
  uint64_t raw_size = 0;
  bool has_raw = false;
  uint64_t counts[kFields] = {};
  each_field(bytes, [&](const Field& f) {
    if (f.number == 1) {  // dims: int64, packed or not
      each_value(Field{1, f.wire, f.varint, f.data, f.size}, kInt64,
                 [&](uint64_t v, const uint8_t*) { t.dims.push_back(static_cast<int64_t>(v)); });
    } else if (f.number == 2 && f.wire == 0) {
      type = static_cast<int32_t>(static_cast<uint32_t>(f.varint));  // an int32, as protobuf reads it
    } else if (f.number == 3 && f.wire == 2) {
      segments = true;
    } else if (f.number == 8 && f.wire == 2) {
      t.name.assign(reinterpret_cast<const char*>(f.data), f.size);
    } else if (f.number == 9 && f.wire == 2) {
      raw = f.data, raw_size = f.size, has_raw = true;
    } else if (f.number == 13 && f.wire == 2) {
      external = true;
    } else if (f.number == 14 && f.wire == 0) {
      location = f.varint;  // data_location: 1 is EXTERNAL
    } else if (const int which = value_field(f.number); which >= 0) {
      each_value(f, which, [&](uint64_t, const uint8_t*) { ++counts[which]; });
    }  // any other field (doc_string, metadata_props) is skipped
  });
  // 2. The rules, in the order every verifier applies them
  auto refuse = [&t](const std::string& why) { return BundleError("tensor " + t.name + ": " + why); };
  if (segments) throw refuse("stored in segments, which this reader does not take");
  if (external || location == 1) throw refuse("stored in external data, which this reader does not take");
  const Element* e = element_of(type);
  if (e == nullptr) {
    const char* known = refused_type_name(type);
    throw refuse("unsupported ONNX data type " + std::to_string(type) + (known ? std::string(" (") + known + ")" : "") +
                 "; this reader takes float32, uint8, int64, bool, float16, float64");
  }
  int64_t count = 1;  // each dim, and the product in order: it must fit before anything is allocated
  for (size_t k = 0; k < t.dims.size(); ++k) {
    if (t.dims[k] < 0) throw refuse("dims[" + std::to_string(k) + "] = " + std::to_string(t.dims[k]) + " is negative");
    if (__builtin_mul_overflow(count, t.dims[k], &count)) {
      throw refuse("dims [" + join(t.dims) + "] hold more than 2^63-1 elements");
    }
  }
  std::string stray;
  for (int which = 0; which < kFields; ++which) {
    if (which != e->field && counts[which]) stray += (stray.empty() ? "" : ", ") + std::string(kFieldNames[which]);
  }
  if (!stray.empty()) throw refuse(std::string(e->type) + " values in " + stray);
  uint64_t found = counts[e->field];
  if (has_raw) {
    if (found) throw refuse(std::string("values in both raw_data and ") + kFieldNames[e->field]);
    if (raw_size % e->size) {
      throw refuse("raw_data of " + std::to_string(raw_size) + " bytes is not whole " + e->type + " elements");
    }
    found = raw_size / e->size;
    if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) {
      const uint8_t* bad = std::find_if(raw, raw + raw_size, [](uint8_t b) { return b > 1; });
      if (bad != raw + raw_size) {
        throw refuse("raw_data[" + std::to_string(bad - raw) + "] = " + std::to_string(*bad) + " is not a bool value");
      }
    }
  } else if (e->field == kInt32) {  // each value an int32 (protobuf keeps a varint's low 32 bits) in its range
    uint64_t k = 0;
    each_field(bytes, [&](const Field& f) {
      if (f.number != 5) return;
      each_value(f, kInt32, [&](uint64_t v, const uint8_t*) {
        const int64_t value = static_cast<int32_t>(static_cast<uint32_t>(v));
        if (value < e->low || value > e->high) {
          throw refuse("int32_data[" + std::to_string(k) + "] = " + std::to_string(value) + " is not a " + e->type +
                       " value");
        }
        ++k;
      });
    });
  }
  if (found != static_cast<uint64_t>(count)) {
    throw refuse(std::to_string(found) + " values for shape [" + join(t.dims) + "]");
  }
  // 3. Only now the values: count elements of the type's size, from raw_data or the typed field
  t.type = static_cast<ONNXTensorElementDataType>(type);
  t.data.resize(static_cast<size_t>(count) * e->size);
  if (has_raw) {
    if (raw_size) std::memcpy(t.data.data(), raw, raw_size);
    return t;
  }
  uint8_t* out = t.data.data();
  each_field(bytes, [&](const Field& f) {
    if (value_field(f.number) != e->field) return;
    each_value(f, e->field, [&](uint64_t v, const uint8_t* fixed) {
      if (fixed != nullptr) {  // float_data, double_data: the bytes as they are (little-endian)
        std::memcpy(out, fixed, e->size);
      } else if (e->field == kInt64) {
        const int64_t value = static_cast<int64_t>(v);
        std::memcpy(out, &value, 8);
      } else if (e->size == 2) {  // float16: the bit pattern
        const uint16_t bits = static_cast<uint16_t>(v);
        std::memcpy(out, &bits, 2);
      } else {  // bool, uint8
        *out = static_cast<uint8_t>(v);
      }
      out += e->size;
    });
  });
  return t;
}

static std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw BundleError("cannot read " + file.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

Tensor load_tensor(const fs::path& file) {
  try {
    return decode_tensor(read_file(file));
  } catch (const BundleError& e) {
    throw BundleError(file.string() + ": " + e.what());
  }
}

// --- sha256 (OpenSSL's libcrypto) -----------------------------------------------------------------------------

std::string sha256_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw BundleError("cannot read " + file.string());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw BundleError("OpenSSL: no sha256");
  std::vector<char> chunk(1 << 20);  // external weights can be gigabytes: never the whole file at once
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    EVP_DigestUpdate(ctx.get(), chunk.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &length);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int k = 0; k < length; ++k) out += {hex[digest[k] >> 4], hex[digest[k] & 15]};
  return out;
}

// --- the manifest ---------------------------------------------------------------------------------------------

fs::path inside(const fs::path& dir, const std::string& relative) {
  if (relative.find('\\') != std::string::npos || relative.find('\0') != std::string::npos) return {};
  for (size_t start = 0;;) {
    const size_t slash = relative.find('/', start);
    const std::string part = relative.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") return {};
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  const fs::path root = fs::weakly_canonical(dir);
  const fs::path file = fs::weakly_canonical(root / relative);  // symlinks resolved, as Python's and Node's are
  const auto [r, f] = std::mismatch(root.begin(), root.end(), file.begin(), file.end());
  return r == root.end() && f != file.end() ? file : fs::path();
}

namespace {

// Every test set and decode step, with where it is in the manifest (test_data_sets[2])
std::vector<std::pair<std::string, const json*>> vector_sets(const json& manifest) {
  std::vector<std::pair<std::string, const json*>> sets;
  for (size_t k = 0; k < manifest["test_data_sets"].size(); ++k) {
    sets.emplace_back("test_data_sets[" + std::to_string(k) + "]", &manifest["test_data_sets"][k]);
  }
  if (manifest.contains("decode")) {
    const json& steps = manifest["decode"]["steps"];
    for (size_t k = 0; k < steps.size(); ++k) sets.emplace_back("decode.steps[" + std::to_string(k) + "]", &steps[k]);
  }
  return sets;
}

// The rules the schema cannot state: finite tolerances, and a folder of its own for every set and decode step.
std::string beyond_schema(const json& manifest) {
  for (const char* key : {"atol", "rtol"}) {
    if (!std::isfinite(manifest["tolerance"][key].get<double>())) {
      return std::string("tolerance.") + key + " is not a finite number";
    }
  }
  std::map<std::string, std::string> seen;
  for (const auto& [where, entry] : vector_sets(manifest)) {
    const std::string folder = (*entry)["folder"];
    if (const auto found = seen.find(folder); found != seen.end()) {
      return where + ".folder '" + folder + "' is also " + found->second + "'s";
    }
    seen.emplace(folder, where);
  }
  return "";
}

std::string outputs_problem(const json& manifest, const std::vector<std::string>& outputs) {
  std::vector<std::string> listed;
  for (const json& o : manifest["outputs"]) listed.push_back(o["name"]);
  auto quoted = [](const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
    return out;
  };
  if (listed != outputs) return "outputs names " + quoted(listed) + "; the model gives " + quoted(outputs);
  for (const auto& [where, entry] : vector_sets(manifest)) {
    std::vector<std::string> names;
    for (const json& f : (*entry)["outputs"]) names.push_back(f["name"]);
    for (const auto& name : outputs) {
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        return where + ".outputs lacks the model's output '" + name + "'";
      }
    }
    for (const auto& name : names) {
      if (std::find(outputs.begin(), outputs.end(), name) == outputs.end()) {
        return where + ".outputs names '" + name + "', which the model does not give";
      }
      if (std::count(names.begin(), names.end(), name) > 1) {
        return where + ".outputs names '" + name + "' more than once";
      }
    }
  }
  if (manifest.contains("decode")) {
    for (const auto& [present, past] : manifest["decode"]["thread"].items()) {
      if (std::find(outputs.begin(), outputs.end(), present) == outputs.end()) {
        return "decode.thread names '" + present + "', which the model does not give";
      }
    }
  }
  return "";
}

}  // namespace

json read_manifest(const fs::path& dir) {
  const fs::path file = dir / "manifest.json";
  if (!fs::is_regular_file(file)) throw BundleError(dir.string() + " is not a bundle: it has no manifest.json");
  if (inside(dir, "manifest.json").empty()) {
    throw BundleError(file.string() + " is outside the bundle: a symlink whose target leaves it");
  }
  json manifest;
  try {
    manifest = json::parse(read_file(file));  // NaN, Infinity and numbers past a double are refused: not JSON
  } catch (const json::exception& e) {
    throw BundleError(file.string() + " is not valid JSON: " + e.what());
  }
  if (!manifest.is_object() || manifest.value("format", json()) != kFormat) {
    throw BundleError(file.string() + " is not an attn-onnx bundle manifest (format is not " + kFormat + ")");
  }
  std::string problem = schema_problem(manifest);
  if (problem.empty()) problem = beyond_schema(manifest);
  if (!problem.empty()) throw BundleError(file.string() + " is malformed: " + problem);
  return manifest;
}

void check_outputs(const fs::path& dir, const json& manifest, const std::vector<std::string>& outputs) {
  const std::string problem = outputs_problem(manifest, outputs);
  if (!problem.empty()) throw BundleError((dir / "manifest.json").string() + " is malformed: " + problem);
}

std::vector<std::string> changed_files(const fs::path& dir, const json& manifest) {
  std::vector<std::pair<std::string, std::string>> files{{manifest["model"]["file"], manifest["model"]["sha256"]}};
  if (manifest["model"].contains("data")) {  // the weights, as external data beside the model
    files.emplace_back(manifest["model"]["data"]["file"], manifest["model"]["data"]["sha256"]);
  }
  auto add = [&files](const json& entry) {
    for (const char* side : {"inputs", "outputs"}) {
      for (const json& f : entry[side]) files.emplace_back(f["file"], f["sha256"]);
    }
  };
  for (const json& set : manifest["test_data_sets"]) add(set);
  if (manifest.contains("decode")) {
    for (const json& step : manifest["decode"]["steps"]) add(step);
  }
  std::vector<std::string> changed;
  for (const auto& [relative, expected] : files) {
    const fs::path file = inside(dir, relative);
    if (file.empty()) {
      changed.push_back(relative + " (outside the bundle)");
    } else if (!fs::is_regular_file(file)) {
      changed.push_back(relative + " (missing)");
    } else if (const std::string actual = sha256_file(file); actual != expected) {
      changed.push_back(relative + " (sha256 " + actual.substr(0, 12) + "..., the manifest says " +
                        expected.substr(0, 12) + "...)");
    }
  }
  return changed;
}

// --- comparing ------------------------------------------------------------------------------------------------

static std::string join_dims(const std::vector<int64_t>& dims) {  // as JavaScript prints an array: 2,4,16
  std::string out;
  for (size_t k = 0; k < dims.size(); ++k) out += (k ? "," : "") + std::to_string(dims[k]);
  return out;
}

std::string valid_lengths_problem(const std::vector<int64_t>& lengths, const std::vector<int64_t>& dims) {
  const bool fits = dims.size() >= 3 && dims[0] == static_cast<int64_t>(lengths.size()) &&
                    std::all_of(lengths.begin(), lengths.end(), [&](int64_t n) { return n <= dims[2]; });
  return fits ? "" : "valid_lengths [" + join_dims(lengths) + "] do not fit shape [" + join_dims(dims) + "]";
}

std::string step_label(const json& step) {
  std::string past;
  if (step["past_len"].is_array()) {
    for (const json& n : step["past_len"]) past += (past.empty() ? "" : ", ") + std::to_string(n.get<int64_t>());
    past = "[" + past + "]";
  } else {
    past = std::to_string(step["past_len"].get<int64_t>());
  }
  return step["folder"].get<std::string>() + " (" + std::to_string(step["new_tokens"].get<int64_t>()) +
         " new, past " + past + ")";
}

Verdict compare(const Ort::Value& actual, const Tensor& expected, const Tolerance& tolerance,
                const std::vector<int64_t>* lengths) {
  const auto info = actual.GetTensorTypeAndShapeInfo();
  const std::vector<int64_t> shape = info.GetShape();
  const auto type = info.GetElementType();
  const double inf = std::numeric_limits<double>::infinity();
  if (shape != expected.dims) {
    return {false, inf, "shape [" + join_dims(shape) + "] != [" + join_dims(expected.dims) + "]"};
  }
  if (type != expected.type) return {false, inf, "type " + type_name(type) + " != " + type_name(expected.type)};
  if (lengths != nullptr) {
    if (std::string misfit = valid_lengths_problem(*lengths, expected.dims); !misfit.empty()) {
      return {false, inf, misfit};
    }
  }
  // element i is compared unless it lies beyond its batch row's valid length on axis 2
  int64_t inner = 1, row = 1;
  for (size_t k = 1; k < expected.dims.size(); ++k) {
    row *= expected.dims[k];
    if (k >= 3) inner *= expected.dims[k];
  }
  const auto compared = [&](size_t i) {
    if (lengths == nullptr) return true;
    const int64_t at = static_cast<int64_t>(i);
    return (at / inner) % expected.dims[2] < (*lengths)[static_cast<size_t>(at / row)];
  };
  const auto* a = static_cast<const uint8_t*>(actual.GetTensorRawData());
  const uint8_t* e = expected.data.data();
  double max_abs = 0, needed = 0;
  size_t nonfinite = 0;
  for (size_t i = 0, n = static_cast<size_t>(expected.count()); i < n; ++i) {
    if (!compared(i)) continue;  // unspecified
    const double x = element(a, type, i), y = element(e, type, i);
    if (!std::isfinite(x) || !std::isfinite(y)) {
      ++nonfinite;
      continue;
    }
    const double diff = std::fabs(x - y);
    max_abs = std::max(max_abs, diff);
    needed = std::max(needed, diff - tolerance.rtol * std::fabs(y));
  }
  if (nonfinite) return {false, inf, std::to_string(nonfinite) + " NaN/Inf values"};
  if (needed <= tolerance.atol) return {true, max_abs, ""};
  return {false, max_abs, "max_abs=" + js_precision3(max_abs) + " beyond atol=" + js_number(tolerance.atol) +
                              ", rtol=" + js_number(tolerance.rtol)};
}

// --- JavaScript's number formatting ---------------------------------------------------------------------------

std::string js_precision3(double x) {  // Number.prototype.toPrecision(3)
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x < 0 ? "-Infinity" : "Infinity";
  if (x == 0) return "0.00";
  const std::string sign = x < 0 ? "-" : "";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2e", std::fabs(x));  // d.dde[+-]XX: the three digits, correctly rounded
  const std::string digits = std::string(1, buf[0]) + buf[2] + buf[3];
  const int e = std::atoi(buf + 5);
  if (e < -6 || e >= 3) {
    return sign + digits[0] + "." + digits.substr(1) + "e" + (e < 0 ? "-" : "+") + std::to_string(std::abs(e));
  }
  if (e >= 0) return sign + digits.substr(0, e + 1) + (e == 2 ? "" : "." + digits.substr(e + 1));
  return sign + "0." + std::string(-e - 1, '0') + digits;
}

std::string js_number(double x) {  // String(x): the shortest digits that round-trip, laid out as ECMAScript says
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x < 0 ? "-Infinity" : "Infinity";
  if (x == 0) return "0";
  const std::string sign = x < 0 ? "-" : "";
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, std::fabs(x), std::chars_format::scientific);
  const std::string text(buf, result.ptr);  // d[.ddd]e[+-]XX
  const size_t e_at = text.find('e');
  std::string digits = text.substr(0, e_at);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int k = static_cast<int>(digits.size()), n = std::stoi(text.substr(e_at + 1)) + 1;
  if (k <= n && n <= 21) return sign + digits + std::string(n - k, '0');
  if (0 < n && n <= 21) return sign + digits.substr(0, n) + "." + digits.substr(n);
  if (-6 < n && n <= 0) return sign + "0." + std::string(-n, '0') + digits;
  return sign + digits.substr(0, 1) + (k > 1 ? "." + digits.substr(1) : "") + "e" + (n - 1 < 0 ? "-" : "+") +
         std::to_string(std::abs(n - 1));
}

// --- verifying a bundle: every set and decode step, on this process's onnxruntime ----------------------------------

namespace {

// One model, its output names, and a run over named feeds that returns every output by name.
class VerifyModel {
 public:
  VerifyModel(Ort::Env& env, const fs::path& file) : session_(env, file.c_str(), Ort::SessionOptions()) {
    Ort::AllocatorWithDefaultOptions allocator;
    for (size_t k = 0; k < session_.GetOutputCount(); ++k) {
      outputs_.emplace_back(session_.GetOutputNameAllocated(k, allocator).get());
    }
  }

  std::map<std::string, Ort::Value> run(const std::vector<std::string>& names, const std::vector<Ort::Value>& values) {
    std::vector<const char*> in, out;
    for (const auto& n : names) in.push_back(n.c_str());
    for (const auto& n : outputs_) out.push_back(n.c_str());
    auto results = session_.Run(Ort::RunOptions{nullptr}, in.data(), values.data(), in.size(), out.data(), out.size());
    std::map<std::string, Ort::Value> by_name;
    for (size_t k = 0; k < results.size(); ++k) by_name.emplace(outputs_[k], std::move(results[k]));
    return by_name;
  }

  const std::vector<std::string>& outputs() const { return outputs_; }

 private:
  Ort::Session session_;
  std::vector<std::string> outputs_;
};

// Feeds read from a set's (or step's) input files; the Tensors own the bytes the values view.
struct Feeds {
  std::vector<Tensor> tensors;
  std::vector<std::string> names;
  std::vector<Ort::Value> values;

  Feeds(const fs::path& dir, const json& entries, const Ort::MemoryInfo& memory) {
    tensors.reserve(entries.size());
    for (const json& f : entries) {
      tensors.push_back(load_tensor(dir / f["file"].get<std::string>()));
      names.push_back(f["name"]);
      values.push_back(tensors.back().view(memory));
    }
  }
};

// One line per set or step: PASSED/FAILED | runtime | label | max_abs=... [| reasons]
bool judge(const fs::path& dir, const std::string& label, const json& outputs,
           const std::map<std::string, Ort::Value>& results, const Tolerance& tolerance, const std::string& runtime,
           const std::function<void(const std::string&)>& log) {
  bool ok = true;
  double max_abs = -std::numeric_limits<double>::infinity();
  std::string reasons;
  for (const json& f : outputs) {
    const std::string name = f["name"];
    const Tensor expected = load_tensor(dir / f["file"].get<std::string>());
    const auto found = results.find(name);
    std::vector<int64_t> lengths;  // the output's valid_lengths, where it has them
    if (f.contains("valid_lengths")) lengths = f["valid_lengths"].get<std::vector<int64_t>>();
    const Verdict v = found == results.end()
        ? Verdict{false, std::numeric_limits<double>::infinity(), "the model has no such output"}
        : compare(found->second, expected, tolerance, f.contains("valid_lengths") ? &lengths : nullptr);
    max_abs = std::max(max_abs, v.max_abs);
    if (!v.passed) {
      reasons += (ok ? "" : "; ") + name + ": " + v.reason;
      ok = false;
    }
  }
  log(std::string(ok ? "PASSED" : "FAILED") + " | " + runtime + " | " + label + " | max_abs=" +
      js_precision3(max_abs) + (ok ? "" : " | " + reasons));
  return ok;
}

ONNXTensorElementDataType element_type(const std::string& dtype) {
  if (dtype == "float32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (dtype == "float16") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  throw BundleError("decode.first_past.dtype " + dtype + " is not float32 or float16");
}

}  // namespace

Summary verify(const fs::path& dir, const std::string& runtime, const std::function<void(const std::string&)>& log) {
  if (!fs::exists(dir)) throw BundleError(dir.string() + ": no such folder");
  if (!fs::is_directory(dir)) throw BundleError(dir.string() + " is not a bundle: it is not a folder");
  const json manifest = read_manifest(dir);
  const std::vector<std::string> changed = changed_files(dir, manifest);
  if (!changed.empty()) {
    std::string list;
    for (const auto& c : changed) list += (list.empty() ? "" : "; ") + c;
    throw BundleError("the bundle was changed after it was written: " + list);
  }
  const Tolerance tolerance{manifest["tolerance"]["atol"], manifest["tolerance"]["rtol"]};
  Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "verify_bundle");
  VerifyModel model(env, dir / manifest["model"]["file"].get<std::string>());
  check_outputs(dir, manifest, model.outputs());  // every set and step compares every output of the model
  const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Summary summary;
  for (const json& set : manifest["test_data_sets"]) {
    Feeds feeds(dir, set["inputs"], memory);
    const auto results = model.run(feeds.names, feeds.values);
    const std::string label = set["folder"].get<std::string>() + " (" + set["case"].get<std::string>() + ")";
    const bool ok = judge(dir, label, set["outputs"], results, tolerance, runtime, log);
    (ok ? summary.passed : summary.failed)++;
  }
  if (manifest.contains("decode")) {  // a model with a KV cache: decode step by step, present_* into past_*
    const json& decode = manifest["decode"];
    const auto shape = decode["first_past"]["shape"].get<std::vector<int64_t>>();
    const auto type = element_type(decode["first_past"].value("dtype", "float32"));
    Ort::AllocatorWithDefaultOptions allocator;
    std::map<std::string, Ort::Value> past;  // past name -> zeros: no elements, or a static cache's buffers
    for (const auto& [present, name] : decode["thread"].items()) {
      Ort::Value zeros = Ort::Value::CreateTensor(allocator, shape.data(), shape.size(), type);
      const size_t bytes = zeros.GetTensorTypeAndShapeInfo().GetElementCount() * type_size(type);
      if (bytes) std::memset(zeros.GetTensorMutableRawData(), 0, bytes);
      past.emplace(name.get<std::string>(), std::move(zeros));
    }
    for (const json& step : decode["steps"]) {
      Feeds feeds(dir, step["inputs"], memory);
      for (auto& [name, value] : past) {
        feeds.names.push_back(name);
        feeds.values.push_back(std::move(value));
      }
      auto results = model.run(feeds.names, feeds.values);
      const std::string label = step_label(step);
      const bool ok = judge(dir, label, step["outputs"], results, tolerance, runtime, log);
      (ok ? summary.passed : summary.failed)++;
      past.clear();
      for (const auto& [present, name] : decode["thread"].items()) {
        const auto found = results.find(present);
        if (found == results.end()) throw BundleError("the model has no output " + present + " to thread");
        past.emplace(name.get<std::string>(), std::move(found->second));
      }
    }
  }
  log(std::to_string(summary.passed) + " passed, " + std::to_string(summary.failed) + " failed");
  return summary;
}

std::string onnxruntime_version() { return OrtGetApiBase()->GetVersionString(); }

bool older_than(const std::string& a, const std::string& b) {
  auto parts = [](const std::string& v) {
    std::vector<long> out;
    std::stringstream in(v);
    for (std::string part; std::getline(in, part, '.');) out.push_back(std::strtol(part.c_str(), nullptr, 10));
    return out;
  };
  const auto x = parts(a), y = parts(b);
  for (size_t i = 0; i < std::max(x.size(), y.size()); ++i) {
    const long p = i < x.size() ? x[i] : 0, q = i < y.size() ? y[i] : 0;
    if (p != q) return p < q;
  }
  return false;
}

std::string release_problem(const json& manifest, const std::string& runtime) {
  const json& model = manifest["model"];
  if (!model.contains("min_onnxruntime") || !model["min_onnxruntime"].is_string()) return "";
  const std::string needs = model["min_onnxruntime"];
  if (!older_than(onnxruntime_version(), needs)) return "";
  return "the bundle needs onnxruntime >= " + needs + " (its manifest's min_onnxruntime); this runs " + runtime;
}

}  // namespace bundle
