// verify_bundle BUNDLE_DIR
// Checks the manifest's sha256s, runs every golden vector set in onnxruntime's C++ API, and compares the
// outputs with the float64 PyTorch answers within the manifest's tolerance. A model with a KV cache also
// decodes the manifest's decode steps, threading each step's present_* into the next step's past_*. One line
// per set or step, in verify.js's format; exit 0 when all pass, 1 on any failure or a bad bundle, 2 on usage.

#include <algorithm>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "bundle.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kRuntime = "onnxruntime-cpp";
constexpr const char* kHelp =
    "Checks the sha256s in BUNDLE_DIR/manifest.json, runs every golden vector set (and decode step) in\n"
    "onnxruntime's C++ API and compares the outputs with the manifest's float64 answers within its tolerance.\n"
    "One line per set: PASSED|FAILED | onnxruntime-cpp | SET (CASE) | max_abs=... Exit 0 when all pass, 1 on a\n"
    "failed set or a missing, changed or malformed bundle (one line 'Error: ...'), 2 on usage.";

// One model, its output names, and a run over named feeds that returns every output by name.
class Model {
 public:
  Model(Ort::Env& env, const fs::path& file) : session_(env, file.c_str(), Ort::SessionOptions()) {
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
  std::vector<bundle::Tensor> tensors;
  std::vector<std::string> names;
  std::vector<Ort::Value> values;

  Feeds(const fs::path& dir, const json& entries, const Ort::MemoryInfo& memory) {
    tensors.reserve(entries.size());
    for (const json& f : entries) {
      tensors.push_back(bundle::load_tensor(dir / f["file"].get<std::string>()));
      names.push_back(f["name"]);
      values.push_back(tensors.back().view(memory));
    }
  }
};

// One line per set or step: PASSED/FAILED | runtime | label | max_abs=... [| reasons]
bool judge(const fs::path& dir, const std::string& label, const json& outputs,
           const std::map<std::string, Ort::Value>& results, const bundle::Tolerance& tolerance) {
  bool ok = true;
  double max_abs = -std::numeric_limits<double>::infinity();
  std::string reasons;
  for (const json& f : outputs) {
    const std::string name = f["name"];
    const bundle::Tensor expected = bundle::load_tensor(dir / f["file"].get<std::string>());
    const auto found = results.find(name);
    const bundle::Verdict v = found == results.end()
        ? bundle::Verdict{false, std::numeric_limits<double>::infinity(), "the model has no such output"}
        : bundle::compare(found->second, expected, tolerance);
    max_abs = std::max(max_abs, v.max_abs);
    if (!v.passed) {
      reasons += (ok ? "" : "; ") + name + ": " + v.reason;
      ok = false;
    }
  }
  std::cout << (ok ? "PASSED" : "FAILED") << " | " << kRuntime << " | " << label
            << " | max_abs=" << bundle::js_precision3(max_abs) << (ok ? "" : " | " + reasons) << "\n";
  return ok;
}

ONNXTensorElementDataType element_type(const std::string& dtype) {
  if (dtype == "float32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (dtype == "float16") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  throw bundle::BundleError("decode.first_past.dtype " + dtype + " is not float32 or float16");
}

bool verify(const fs::path& dir) {
  if (!fs::exists(dir)) throw bundle::BundleError(dir.string() + ": no such folder");
  if (!fs::is_directory(dir)) throw bundle::BundleError(dir.string() + " is not a bundle: it is not a folder");
  const json manifest = bundle::read_manifest(dir);
  const std::vector<std::string> changed = bundle::changed_files(dir, manifest);
  if (!changed.empty()) {
    std::string list;
    for (const auto& c : changed) list += (list.empty() ? "" : "; ") + c;
    throw bundle::BundleError("the bundle was changed after it was written: " + list);
  }
  const bundle::Tolerance tolerance{manifest["tolerance"]["atol"], manifest["tolerance"]["rtol"]};
  Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "verify_bundle");
  Model model(env, dir / manifest["model"]["file"].get<std::string>());
  bundle::check_outputs(dir, manifest, model.outputs());  // every set and step compares every output of the model
  const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  int passed = 0, failed = 0;
  for (const json& set : manifest["test_data_sets"]) {
    Feeds feeds(dir, set["inputs"], memory);
    const auto results = model.run(feeds.names, feeds.values);
    const std::string label = set["folder"].get<std::string>() + " (" + set["case"].get<std::string>() + ")";
    (judge(dir, label, set["outputs"], results, tolerance) ? passed : failed)++;
  }
  if (manifest.contains("decode")) {  // a model with a KV cache: decode step by step, present_* into past_*
    const json& decode = manifest["decode"];
    const auto shape = decode["first_past"]["shape"].get<std::vector<int64_t>>();
    const auto type = element_type(decode["first_past"].value("dtype", "float32"));
    Ort::AllocatorWithDefaultOptions allocator;
    std::map<std::string, Ort::Value> past;  // past name -> value (no elements before the first step)
    for (const auto& [present, name] : decode["thread"].items()) {
      past.emplace(name.get<std::string>(), Ort::Value::CreateTensor(allocator, shape.data(), shape.size(), type));
    }
    for (const json& step : decode["steps"]) {
      Feeds feeds(dir, step["inputs"], memory);
      for (auto& [name, value] : past) {
        feeds.names.push_back(name);
        feeds.values.push_back(std::move(value));
      }
      auto results = model.run(feeds.names, feeds.values);
      const std::string label = step["folder"].get<std::string>() + " (" +
                                std::to_string(step["new_tokens"].get<int64_t>()) + " new, past " +
                                std::to_string(step["past_len"].get<int64_t>()) + ")";
      (judge(dir, label, step["outputs"], results, tolerance) ? passed : failed)++;
      past.clear();
      for (const auto& [present, name] : decode["thread"].items()) {
        const auto found = results.find(present);
        if (found == results.end()) throw bundle::BundleError("the model has no output " + present + " to thread");
        past.emplace(name.get<std::string>(), std::move(found->second));
      }
    }
  }
  std::cout << passed << " passed, " << failed << " failed" << std::endl;
  return failed == 0;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  const std::string usage = "usage: verify_bundle BUNDLE_DIR";
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::cout << usage << "\n" << kHelp << std::endl;
    return 0;
  }
  if (argc != 2 || argv[1][0] == '-') {
    const char* what = argc < 2 ? "give a bundle folder" : argc > 2 ? "give one bundle folder" : "unknown option";
    std::cerr << "Error: " << what << " (" << usage << ")" << std::endl;
    return 2;
  }
  const OrtApi* api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::cerr << "Error: the onnxruntime library (" << OrtGetApiBase()->GetVersionString()
              << ") is older than the headers this was built with (C API " << ORT_API_VERSION << ")" << std::endl;
    return 1;
  }
  Ort::InitApi(api);
  try {
    return verify(argv[1]) ? 0 : 1;
  } catch (const bundle::BundleError& e) {
    std::cout.flush();
    std::cerr << "Error: " << e.what() << std::endl;
  } catch (const Ort::Exception& e) {
    std::cout.flush();
    std::cerr << "Error: onnxruntime: " << first_line(e.what()) << std::endl;
  } catch (const std::exception& e) {  // the filesystem, the allocator: still one line, never an abort
    std::cout.flush();
    std::cerr << "Error: " << first_line(e.what()) << std::endl;
  }
  return 1;
}
