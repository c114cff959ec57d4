// embed BUNDLE_DIR [--no-verify]
// The lines a C++ service needs to serve an exported MultiHeadedAttention (export-attn's default interface:
// query, key, value of float32 (batch, len, d_model) and a bool mask (batch, q_len or 1, kv_len), nonzero =
// may attend), shipped as a bundle (export-attn --bundle): refuse what this onnxruntime cannot answer right, load
// the model once, then run each request on the same session. Here three requests of different shapes stand in for
// a service's traffic; each prints its output shape and sum.
//
// Before serving, it refuses (one line on stderr, exit 1) a bundle whose manifest's min_onnxruntime is above the
// onnxruntime it runs, and one whose sha256s or golden sets and decode steps fail on it (bundle::verify, as
// verify_bundle runs them). --no-verify skips the golden sets, and says so; the release check stays.

#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "bundle.h"

namespace fs = std::filesystem;

namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// 0) once per process, before serving: the bundle is one this onnxruntime answers right. The line the log gets,
//    or BundleError naming the set, the runtime and its version.
std::string verify_before_serving(const fs::path& dir, bool verify) {
  const std::string runtime = "onnxruntime-cpp " + bundle::onnxruntime_version();
  const nlohmann::json manifest = bundle::read_manifest(dir);
  if (const std::string problem = bundle::release_problem(manifest, runtime); !problem.empty()) {
    throw bundle::BundleError(problem);
  }
  if (!verify) return "verification skipped (--no-verify): the bundle's golden sets were not run";
  const auto started = std::chrono::steady_clock::now();
  std::string failed;  // the first FAILED line
  std::string last;  // the last set or step begun, for a run that onnxruntime refuses
  bundle::Summary summary;
  try {
    summary = bundle::verify(dir, runtime, [&](const std::string& line) {
      if (failed.empty() && line.rfind("FAILED", 0) == 0) failed = line;
      last = line;
    });
  } catch (const Ort::Exception& e) {
    throw bundle::BundleError("the golden sets fail on " + runtime + " (after '" + last + "'): onnxruntime: " +
                              first_line(e.what()) + "; not serving (--no-verify serves anyway)");
  }
  if (summary.failed) {  // FAILED | runtime | SET (CASE) | max_abs=... | why
    const size_t label = failed.find(" | ", failed.find(" | ") + 3) + 3;
    const size_t why = failed.find(" | ", failed.find(" | ", label) + 3);
    throw bundle::BundleError("golden set " + failed.substr(label, failed.find(" | ", label) - label) + " fails on " +
                              runtime + ": " + failed.substr(why + 3) + "; not serving (--no-verify serves anyway)");
  }
  const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  return "verified on " + runtime + ": " + std::to_string(summary.passed) + " golden sets and decode steps passed in " +
         std::to_string(static_cast<long>(ms)) + " ms";
}

}  // namespace

int main(int argc, char** argv) try {
  const bool no_verify = argc == 3 && std::strcmp(argv[2], "--no-verify") == 0;
  if (argc < 2 || argc > 3 || (argc == 3 && !no_verify) || argv[1][0] == '-') {
    std::cerr << "Error: usage: embed BUNDLE_DIR [--no-verify]" << std::endl;
    return 2;
  }
  const OrtApi* api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::cerr << "Error: the onnxruntime library (" << OrtGetApiBase()->GetVersionString()
              << ") is older than the headers this was built with (C API " << ORT_API_VERSION << ")" << std::endl;
    return 1;
  }
  Ort::InitApi(api);
  const fs::path dir = argv[1];
  std::cerr << verify_before_serving(dir, !no_verify) << std::endl;  // the log

  // 1) once per process: the environment and the session (loads and optimizes the graph, ~tens of ms)
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "attention-service");
  Ort::SessionOptions options;
  options.SetIntraOpNumThreads(1);  // per request; serve concurrent requests from several threads instead
  const fs::path model = dir / bundle::read_manifest(dir)["model"]["file"].get<std::string>();
  Ort::Session session(env, model.c_str(), options);
  const int64_t d_model = session.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape().back();
  const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  const char* input_names[] = {"query", "key", "value", "mask"};
  const char* output_names[] = {"output"};

  // 2) per request: wrap the request's buffers (no copy) and run; Session::Run may be called from many
  //    threads at once on the one session
  for (const auto [batch, q_len, kv_len] : {std::array<int64_t, 3>{1, 5, 5}, {2, 4, 7}, {3, 9, 4}}) {
    std::vector<float> query(batch * q_len * d_model), memory_states(batch * kv_len * d_model);
    for (size_t i = 0; i < query.size(); ++i) query[i] = std::sin(0.01f * i);  // a request's activations
    for (size_t i = 0; i < memory_states.size(); ++i) memory_states[i] = std::cos(0.02f * i);
    std::unique_ptr<bool[]> mask(new bool[batch * kv_len]);  // (batch, 1, kv_len): key padding, sequence b
    for (int64_t b = 0; b < batch; ++b) {                     // has kv_len - b real keys
      for (int64_t k = 0; k < kv_len; ++k) mask[b * kv_len + k] = k < kv_len - b;
    }
    const int64_t q_shape[] = {batch, q_len, d_model}, kv_shape[] = {batch, kv_len, d_model},
                  mask_shape[] = {batch, 1, kv_len};
    Ort::Value inputs[] = {
        Ort::Value::CreateTensor<float>(memory, query.data(), query.size(), q_shape, 3),
        Ort::Value::CreateTensor<float>(memory, memory_states.data(), memory_states.size(), kv_shape, 3),
        Ort::Value::CreateTensor<float>(memory, memory_states.data(), memory_states.size(), kv_shape, 3),
        Ort::Value::CreateTensor<bool>(memory, mask.get(), batch * kv_len, mask_shape, 3),
    };
    auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names, inputs, 4, output_names, 1);

    // 3) read the answer: (batch, q_len, d_model) float32, owned by `outputs`
    const auto shape = outputs[0].GetTensorTypeAndShapeInfo().GetShape();
    const float* out = outputs[0].GetTensorData<float>();
    double sum = 0;
    for (int64_t i = 0; i < batch * q_len * d_model; ++i) sum += out[i];
    std::cout << std::setprecision(8) << "output (" << shape[0] << ", " << shape[1] << ", " << shape[2]
              << ") sum " << sum << std::endl;
  }
  return 0;
} catch (const bundle::BundleError& e) {  // a bundle this runtime cannot answer right: one line, exit 1
  std::cerr << "Error: " << e.what() << std::endl;
  return 1;
} catch (const Ort::Exception& e) {  // a missing file, a model with another interface: one line, exit 1
  std::cerr << "Error: onnxruntime: " << first_line(e.what()) << std::endl;
  return 1;
} catch (const std::exception& e) {
  std::cerr << "Error: " << first_line(e.what()) << std::endl;
  return 1;
}
