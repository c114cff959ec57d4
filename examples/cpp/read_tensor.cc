// read_tensor FILE...
// Each ONNX TensorProto file (a bundle's golden vector), decoded as verify_bundle decodes it, as one JSON line:
// {"name", "type", "dims", "values"} (float16 as the numbers its bits stand for; NaN and the infinities as the
// strings "NaN", "Infinity", "-Infinity"), or {"error": "..."} for a file the rules refuse. The same lines as
// examples/node's reader gives, so that the two can be compared. Exit 0, or 2 on usage.

#include <cmath>
#include <cstring>
#include <iostream>

#include "bundle.h"

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::cerr << "usage: read_tensor FILE..." << std::endl;
    return 2;
  }
  const OrtApi* api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::cerr << "Error: the onnxruntime library is older than the headers this was built with" << std::endl;
    return 1;
  }
  Ort::InitApi(api);
  for (int k = 1; k < argc; ++k) {
    nlohmann::json line;
    try {
      const bundle::Tensor t = bundle::load_tensor(argv[k]);
      nlohmann::json values = nlohmann::json::array();
      for (int64_t i = 0; i < t.count(); ++i) {
        const double v = bundle::element_value(t, static_cast<size_t>(i));
        if (std::isfinite(v)) values.push_back(v);
        else values.push_back(std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
      }
      line = {{"name", t.name}, {"type", bundle::type_name(t.type)}, {"dims", t.dims}, {"values", values}};
    } catch (const bundle::BundleError& e) {
      line = {{"error", e.what()}};
    }
    std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  return 0;
}
