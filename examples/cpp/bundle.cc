#include "bundle.h"

#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
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
    throw BundleError("a varint longer than 10 bytes in a TensorProto");
  }
  const uint8_t* take(uint64_t n) {
    if (n > static_cast<uint64_t>(end - pos)) throw BundleError("truncated TensorProto");
    const uint8_t* start = pos;
    pos += n;
    return start;
  }
};

template <typename T>
void append_le(std::vector<uint8_t>& out, T value) {  // little-endian hosts only (x86-64, aarch64)
  const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
  out.insert(out.end(), bytes, bytes + sizeof(T));
}

}  // namespace

Tensor decode_tensor(const std::string& bytes) {
  Tensor t;
  std::vector<int64_t> int64s, int32s;
  std::vector<float> floats;
  std::vector<double> doubles;
  bool has_raw = false;
  const auto* start = reinterpret_cast<const uint8_t*>(bytes.data());
  Reader r{start, start + bytes.size()};
  // A repeated integer field, packed (wire type 2) or one value per key (wire type 0).
  auto integers = [&r](int wire, std::vector<int64_t>& into) {
    if (wire == 0) {
      into.push_back(static_cast<int64_t>(r.varint()));
    } else {
      const uint64_t length = r.varint();
      Reader packed{r.take(length), r.pos};
      while (!packed.done()) into.push_back(static_cast<int64_t>(packed.varint()));
    }
  };
  while (!r.done()) {
    const uint64_t key = r.varint();
    const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (field == 13 || (field == 14 && wire == 0 && r.varint() == 1)) {  // external_data, data_location
      throw BundleError("a TensorProto with external data (bundles keep their vectors inline)");
    }
    if (field == 14 && wire == 0) continue;  // data_location DEFAULT, already read
    if ((field == 1 || field == 5 || field == 7) && (wire == 0 || wire == 2)) {
      integers(wire, field == 1 ? t.dims : field == 5 ? int32s : int64s);
    } else if (field == 2 && wire == 0) {
      t.type = static_cast<ONNXTensorElementDataType>(r.varint());
    } else if ((field == 4 && wire == 5) || (field == 10 && wire == 1)) {
      const uint8_t* p = r.take(field == 4 ? 4 : 8);
      if (field == 4) floats.push_back(0), std::memcpy(&floats.back(), p, 4);
      else doubles.push_back(0), std::memcpy(&doubles.back(), p, 8);
    } else if (wire == 2) {
      const uint64_t length = r.varint();
      const uint8_t* p = r.take(length);
      if (field == 8) {
        t.name.assign(reinterpret_cast<const char*>(p), length);
      } else if (field == 9) {
        t.data.assign(p, p + length);
        has_raw = true;
      } else if (field == 4) {
        for (uint64_t k = 0; k + 4 <= length; k += 4) floats.push_back(0), std::memcpy(&floats.back(), p + k, 4);
      } else if (field == 10) {
        for (uint64_t k = 0; k + 8 <= length; k += 8) doubles.push_back(0), std::memcpy(&doubles.back(), p + k, 8);
      }  // any other length-delimited field (doc_string, segment, metadata) is skipped
    } else if (wire == 0) {
      r.varint();
    } else if (wire == 1 || wire == 5) {
      r.take(wire == 1 ? 8 : 4);
    } else {
      throw BundleError("unsupported protobuf wire type " + std::to_string(wire) + " in a TensorProto");
    }
  }
  const size_t size = type_size(t.type);
  if (size == 0) {
    throw BundleError("tensor " + t.name + ": unsupported ONNX data type " + std::to_string(static_cast<int>(t.type)));
  }
  if (!has_raw) {  // the typed fields: float_data, int32_data (bool, uint8, float16 bits, int32), int64_data
    switch (t.type) {
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
        for (float v : floats) append_le(t.data, v);
        break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
        for (double v : doubles) append_le(t.data, v);
        break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
        for (int64_t v : int64s) append_le(t.data, v);
        break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
        for (int64_t v : int32s) append_le(t.data, static_cast<int32_t>(v));
        break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
        for (int64_t v : int32s) append_le(t.data, static_cast<uint16_t>(v));
        break;
      default:  // bool, uint8
        for (int64_t v : int32s) t.data.push_back(static_cast<uint8_t>(v));
    }
  }
  const int64_t count = t.count();
  if (count < 0 || t.data.size() != static_cast<size_t>(count) * size) {
    std::string shape;
    for (size_t k = 0; k < t.dims.size(); ++k) shape += (k ? "," : "") + std::to_string(t.dims[k]);
    throw BundleError("tensor " + t.name + ": " + std::to_string(t.data.size() / size) + " values for shape [" +
                      shape + "]");
  }
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

namespace {

// Every key the verifier reads, checked once up front so that a malformed manifest is one clear line.
struct Shape {
  const fs::path& file;

  void need(const json& j, const std::string& where, const char* key, bool (json::*is)() const noexcept) const {
    if (!j.is_object() || !j.contains(key) || !(j.at(key).*is)()) {
      throw BundleError(file.string() + " lacks " + where + key);
    }
  }
  void files(const json& entry, const std::string& where) const {
    for (const char* side : {"inputs", "outputs"}) {
      need(entry, where, side, &json::is_array);
      for (size_t k = 0; k < entry[side].size(); ++k) {
        const std::string at = where + side + "[" + std::to_string(k) + "].";
        for (const char* key : {"file", "sha256", "name"}) need(entry[side][k], at, key, &json::is_string);
      }
    }
  }
};

}  // namespace

json read_manifest(const fs::path& dir) {
  const fs::path file = dir / "manifest.json";
  if (!fs::is_regular_file(file)) throw BundleError(dir.string() + " is not a bundle: it has no manifest.json");
  json manifest;
  try {
    manifest = json::parse(read_file(file));
  } catch (const json::exception& e) {
    throw BundleError(file.string() + " is not valid JSON: " + e.what());
  }
  if (!manifest.is_object() || manifest.value("format", json()) != kFormat) {
    throw BundleError(file.string() + " is not an attn-onnx bundle manifest (format is not " + kFormat + ")");
  }
  const Shape shape{file};
  shape.need(manifest, "", "model", &json::is_object);
  for (const char* key : {"file", "sha256"}) shape.need(manifest["model"], "model.", key, &json::is_string);
  if (manifest["model"].contains("data")) {
    for (const char* key : {"file", "sha256"}) {
      shape.need(manifest["model"]["data"], "model.data.", key, &json::is_string);
    }
  }
  shape.need(manifest, "", "tolerance", &json::is_object);
  for (const char* key : {"atol", "rtol"}) shape.need(manifest["tolerance"], "tolerance.", key, &json::is_number);
  shape.need(manifest, "", "test_data_sets", &json::is_array);
  for (size_t k = 0; k < manifest["test_data_sets"].size(); ++k) {
    const std::string at = "test_data_sets[" + std::to_string(k) + "].";
    for (const char* key : {"folder", "case"}) shape.need(manifest["test_data_sets"][k], at, key, &json::is_string);
    shape.files(manifest["test_data_sets"][k], at);
  }
  if (manifest.contains("decode")) {
    const json& decode = manifest["decode"];
    shape.need(manifest, "", "decode", &json::is_object);
    shape.need(decode, "decode.", "thread", &json::is_object);
    for (const auto& [present, past] : decode["thread"].items()) {
      if (!past.is_string()) throw BundleError(file.string() + " lacks decode.thread." + present + " (a name)");
    }
    shape.need(decode, "decode.", "first_past", &json::is_object);
    shape.need(decode["first_past"], "decode.first_past.", "shape", &json::is_array);
    for (const json& d : decode["first_past"]["shape"]) {
      if (!d.is_number_integer()) throw BundleError(file.string() + " lacks decode.first_past.shape (integers)");
    }
    shape.need(decode, "decode.", "steps", &json::is_array);
    for (size_t k = 0; k < decode["steps"].size(); ++k) {
      const std::string at = "decode.steps[" + std::to_string(k) + "].";
      shape.need(decode["steps"][k], at, "folder", &json::is_string);
      for (const char* key : {"new_tokens", "past_len"}) {
        shape.need(decode["steps"][k], at, key, &json::is_number_integer);
      }
      shape.files(decode["steps"][k], at);
    }
  }
  return manifest;
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
  const fs::path root = fs::weakly_canonical(dir);
  std::vector<std::string> changed;
  for (const auto& [relative, expected] : files) {
    const fs::path file = fs::weakly_canonical(root / relative);  // symlinks resolved, as Python's check does
    const auto [r, f] = std::mismatch(root.begin(), root.end(), file.begin(), file.end());
    if (r != root.end() || f == file.end()) {
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

Verdict compare(const Ort::Value& actual, const Tensor& expected, const Tolerance& tolerance) {
  const auto info = actual.GetTensorTypeAndShapeInfo();
  const std::vector<int64_t> shape = info.GetShape();
  const auto type = info.GetElementType();
  const double inf = std::numeric_limits<double>::infinity();
  if (shape != expected.dims) {
    return {false, inf, "shape [" + join_dims(shape) + "] != [" + join_dims(expected.dims) + "]"};
  }
  if (type != expected.type) return {false, inf, "type " + type_name(type) + " != " + type_name(expected.type)};
  const auto* a = static_cast<const uint8_t*>(actual.GetTensorRawData());
  const uint8_t* e = expected.data.data();
  double max_abs = 0, needed = 0;
  size_t nonfinite = 0;
  for (size_t i = 0, n = static_cast<size_t>(expected.count()); i < n; ++i) {
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

}  // namespace bundle
