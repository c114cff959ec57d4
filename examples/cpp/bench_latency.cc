// bench_latency MODEL.onnx FEEDS_DIR [--threads N]
// Times a model in onnxruntime's C++ API on the feeds in FEEDS_DIR (input_K.pb TensorProto files, each named
// as the model's input, the layout of a bundle's test_data_set_N), so that a harness can time the same model
// on the same inputs in other runtimes beside it. Loads the session once, then answers on stdin, one line at
// a time: a line holding TARGET_MS makes one untimed run, then as many timed runs as fill about TARGET_MS
// (1 to 1000), and prints their mean in milliseconds on a line of its own. Interleaving rounds with other
// runtimes is the harness's job. Exit 0 at the end of stdin, 1 on a bad file or model, 2 on usage.
//
//   printf '50\n50\n50\n' | bench_latency model.onnx feeds/

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "bundle.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  int threads = 0;  // onnxruntime's default: one per physical core
  if (args.size() == 4 && args[2] == "--threads") {
    try {
      threads = std::stoi(args[3]);
    } catch (const std::exception&) {
      threads = -1;
    }
    args.resize(2);
  }
  if (args.size() != 2 || threads < 0) {
    std::cerr << "usage: bench_latency MODEL.onnx FEEDS_DIR [--threads N]" << std::endl;
    return 2;
  }
  const OrtApi* api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::cerr << "Error: the onnxruntime library is older than the headers (C API " << ORT_API_VERSION << ")"
              << std::endl;
    return 1;
  }
  Ort::InitApi(api);
  try {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(args[1])) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("input_", 0) == 0 && entry.path().extension() == ".pb") files.push_back(entry.path());
    }
    if (files.empty()) throw bundle::BundleError(args[1] + " holds no input_K.pb files");
    std::sort(files.begin(), files.end());
    const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<bundle::Tensor> tensors;
    for (const auto& f : files) tensors.push_back(bundle::load_tensor(f));
    std::vector<const char*> names;
    std::vector<Ort::Value> values;
    for (auto& t : tensors) {
      names.push_back(t.name.c_str());
      values.push_back(t.view(memory));
    }

    // The session as bench-attn makes its own: intra-op threads as asked, one inter-op thread, sequential.
    Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "bench_latency");
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(threads);
    options.SetInterOpNumThreads(1);
    options.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
    Ort::Session session(env, args[0].c_str(), options);
    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<std::string> outputs;
    for (size_t k = 0; k < session.GetOutputCount(); ++k) {
      outputs.emplace_back(session.GetOutputNameAllocated(k, allocator).get());
    }
    std::vector<const char*> output_names;
    for (const auto& o : outputs) output_names.push_back(o.c_str());
    auto run = [&] {
      session.Run(Ort::RunOptions{nullptr}, names.data(), values.data(), names.size(), output_names.data(),
                  output_names.size());
    };
    using clock = std::chrono::steady_clock;
    const auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
    for (std::string line; std::getline(std::cin, line);) {
      double target_ms = 0;
      try {
        target_ms = std::stod(line);
      } catch (const std::exception&) {
        std::cerr << "Error: a line on stdin must be TARGET_MS, got '" << line << "'" << std::endl;
        return 2;
      }
      auto start = clock::now();
      run();
      const double once = seconds(clock::now() - start);
      const int n = std::max(1, std::min(1000, static_cast<int>(target_ms / 1e3 / std::max(once, 1e-6))));
      start = clock::now();
      for (int k = 0; k < n; ++k) run();
      std::cout << seconds(clock::now() - start) / n * 1e3 << std::endl;
    }
    return 0;
  } catch (const bundle::BundleError& e) {
    std::cerr << "Error: " << e.what() << std::endl;
  } catch (const Ort::Exception& e) {
    const std::string what = e.what();
    std::cerr << "Error: onnxruntime: " << what.substr(0, what.find('\n')) << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "Error: " << e.what() << std::endl;
  }
  return 1;
}
