// embed MODEL.onnx
// The lines a C++ service needs to serve an exported MultiHeadedAttention (export-attn's default interface:
// query, key, value of float32 (batch, len, d_model) and a bool mask (batch, q_len or 1, kv_len), nonzero =
// may attend): load the model once, then run each request on the same session. Here three requests of
// different shapes stand in for a service's traffic; each prints its output shape and sum.

#include <array>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <memory>
#include <vector>

#include <onnxruntime_cxx_api.h>

int main(int argc, char** argv) try {
  if (argc != 2) {
    std::cerr << "usage: embed MODEL.onnx" << std::endl;
    return 2;
  }
  // 1) once per process: the environment and the session (loads and optimizes the graph, ~tens of ms)
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "attention-service");
  Ort::SessionOptions options;
  options.SetIntraOpNumThreads(1);  // per request; serve concurrent requests from several threads instead
  Ort::Session session(env, argv[1], options);
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
} catch (const Ort::Exception& e) {  // a missing file, a model with another interface: one line, exit 1
  std::cerr << "Error: onnxruntime: " << e.what() << std::endl;
  return 1;
}
