// Reading an attn-onnx bundle in C++: the manifest, its sha256s, the golden vectors (ONNX TensorProto files,
// decoded here without a protobuf library), and the comparison rule the manifest states. The C++ twin of
// examples/node/lib/bundle.js: the same checks, the same messages.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#define ORT_API_MANUAL_INIT  // main() checks that the library serves the headers' API version before using it
#include <onnxruntime_cxx_api.h>

namespace bundle {

inline constexpr const char* kFormat = "attn-onnx-bundle/1";

// A bad bundle: a missing or changed file, a malformed manifest or vector. One line, the caller prints it.
struct BundleError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A golden vector as the file holds it: the bytes of its elements in little-endian order, one byte per bool.
struct Tensor {
  std::string name;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // equal to TensorProto.DataType
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;

  int64_t count() const;
  // An onnxruntime tensor over this tensor's bytes (no copy: keep the Tensor alive while the value is used).
  Ort::Value view(const Ort::MemoryInfo& memory);
};

// The element type's name as onnxruntime's JavaScript API spells it (float32, float16, int64, bool, uint8...).
std::string type_name(ONNXTensorElementDataType type);
// Bytes per element; 0 for a type bundles never hold.
size_t type_size(ONNXTensorElementDataType type);
// Element i of a tensor as a number (float16 decoded; int64 beyond 2^53 rounded, as JavaScript's Number() does).
double element_value(const Tensor& t, size_t i);

// TensorProto, by the rules every verifier applies (docs/bundle-format.md): values in raw_data or the element
// type's own field (float_data, int32_data, int64_data, double_data); float32, float16, float64, bool, uint8 and
// int64 only; dims each >= 0 and their product within 2^63-1, checked before anything is allocated; a bool 0 or 1.
// Segments and external data are refused. BundleError saying why ("tensor NAME: ...").
Tensor decode_tensor(const std::string& bytes);
Tensor load_tensor(const std::filesystem::path& file);  // BundleError naming the file

std::string sha256_file(const std::filesystem::path& file);  // lowercase hex

// The manifest: JSON (NaN and Infinity are not), valid under the bundle format's JSON Schema (the one Python and
// Node validate against, built in; ATTN_ONNX_MANIFEST_SCHEMA names a copy to use instead), with finite
// tolerances and a folder of its own for every set and decode step. BundleError naming manifest.json.
nlohmann::json read_manifest(const std::filesystem::path& dir);
// The first way `manifest` breaks the schema, in Python's words (decode.steps[1] lacks 'inputs'); "" if none.
std::string schema_problem(const nlohmann::json& manifest);
// The file a manifest path names, symlinks resolved; empty unless the path is plain (relative, / between parts,
// none of them empty, . or .., no backslash or NUL) and its target lies inside the bundle.
std::filesystem::path inside(const std::filesystem::path& dir, const std::string& relative);
// Every file the manifest names (model, external weights, every vector, decode steps included) that is
// missing, outside the bundle or whose sha256 differs, each as "FILE (why)".
std::vector<std::string> changed_files(const std::filesystem::path& dir, const nlohmann::json& manifest);
// BundleError naming manifest.json unless every set and decode step compares every output of the model
// (`outputs`, its names in order), each once and nothing else, and the manifest's outputs list names them.
void check_outputs(const std::filesystem::path& dir, const nlohmann::json& manifest,
                   const std::vector<std::string>& outputs);

struct Tolerance {
  double atol = 0;
  double rtol = 0;
};

struct Verdict {
  bool passed = false;
  double max_abs = 0;
  std::string reason;  // empty when passed
};

// The manifest's rule: |actual - expected| <= atol + rtol * |expected| everywhere, no NaN or Inf, the same
// shape (checked first) and element type. With `lengths` (the output's valid_lengths, a static cache's presents),
// only [b, :, :lengths[b], ...] of each batch row b is compared (axis 2); the rest is unspecified.
Verdict compare(const Ort::Value& actual, const Tensor& expected, const Tolerance& tolerance,
                const std::vector<int64_t>* lengths = nullptr);
// Why valid_lengths do not fit an expected tensor's dims (rank 3 or more, one length per batch row, each within
// axis 2), in every verifier's words; "" when they fit.
std::string valid_lengths_problem(const std::vector<int64_t>& lengths, const std::vector<int64_t>& dims);
// A decode step as every verifier names it: "decode/step_1 (1 new, past 4)"; a static cache's past_len, one per
// sequence, as "past [4, 0]".
std::string step_label(const nlohmann::json& step);

// Number formatting exactly as JavaScript does it, so that the lines match verify.js's byte for byte:
// x.toPrecision(3) and String(x).
std::string js_precision3(double x);
std::string js_number(double x);

// --- verifying a bundle --------------------------------------------------------------------------------------

struct Summary {
  int passed = 0;
  int failed = 0;
};

// Check the sha256s, run every golden set and decode step (threading present_* into past_*) on this process's
// onnxruntime, and compare each within the manifest's tolerance: one line per set or step to `log`, in
// verify.js's format with `runtime` as the runtime's name ("PASSED | onnxruntime-cpp | SET (CASE) | max_abs=..."),
// then "N passed, M failed". BundleError or Ort::Exception for a bad bundle.
Summary verify(const std::filesystem::path& dir, const std::string& runtime,
               const std::function<void(const std::string&)>& log);

// The onnxruntime library this process runs ("1.32.0").
std::string onnxruntime_version();
// a < b, release numbers compared part by part (1.9 < 1.18).
bool older_than(const std::string& a, const std::string& b);
// Why this onnxruntime is older than the manifest's model.min_onnxruntime (naming both), or "".
std::string release_problem(const nlohmann::json& manifest, const std::string& runtime);

}  // namespace bundle
