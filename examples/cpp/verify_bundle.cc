// verify_bundle BUNDLE_DIR
// Checks the manifest's sha256s, runs every golden vector set in onnxruntime's C++ API, and compares the
// outputs with the float64 PyTorch answers within the manifest's tolerance. A model with a KV cache also
// decodes the manifest's decode steps, threading each step's present_* into the next step's past_* (a static
// cache's buffers start as zeros of first_past's shape); an output with valid_lengths (a static cache's presents)
// is compared over each batch row's valid part only. One line per set or step, in verify.js's format; exit 0 when
// all pass, 1 on any failure or a bad bundle, 2 on usage.

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
    const auto log = [](const std::string& line) { std::cout << line << "\n"; };
    return bundle::verify(argv[1], kRuntime, log).failed == 0 ? 0 : 1;
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
