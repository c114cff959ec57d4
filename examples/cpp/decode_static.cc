// decode_static MODEL.onnx PLAN.json OUT_DIR
// Decodes through a static-cache model (export-attn --kv-cache --max-len N) in place (static_cache.h: Ort::IoBinding,
// the cache's buffer bound as both past and present), step by step as PLAN.json says, and writes what came out.
// The same arguments, plan and files as examples/node/decode_static.js (tests/deploy/test_static_decode_consumers.py
// runs both and compares them with the float64 golden):
//
// PLAN.json: {"batch": B, "fill": 0.0, "steps": [STEP, ...]}
//   batch: the cache's slots; fill: every float of both buffers before the first step (default 0; positions beyond
//   a slot's length keep it: the step must neither read nor write them)
//   STEP: {"q_len": n, "query": "FILE", "key": "FILE", "value": "FILE", "slots": [s, ...], "reset": [s, ...]}
//     q_len new tokens for `slots` (a contiguous run; every slot when absent); FILE (relative to PLAN.json's folder):
//     raw little-endian float32 (len(slots), q_len, E); key and value default to query (self-attention); `reset`:
//     slots emptied before the step.
// OUT_DIR: output_<i>.f32 (step i's output, (len(slots), q_len, E)); past_key.f32 and past_value.f32 (the whole
//   buffers (B, heads, max_len, d_k) after the last step); summary.json {runtime, steps, lengths, heads, max_len, d_k,
//   written_in_place, returned_copy}. Exit 1 with one line "Error: ..." on stderr (a full cache: "Error: the cache
//   is full: slot S holds N of M tokens, ..."); the steps before it are written. Exit 2 on usage.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "static_cache.h"

namespace fs = std::filesystem;

namespace {

std::vector<float> read_floats(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(file.string() + ": cannot be read");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() % sizeof(float)) {
    throw std::runtime_error(file.string() + ": " + std::to_string(bytes.size()) +
                             " bytes is not a whole number of float32s");
  }
  std::vector<float> floats(bytes.size() / sizeof(float));
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(floats.data()));
  return floats;
}

void write_floats(const fs::path& file, const std::vector<float>& floats) {
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(floats.data()), static_cast<std::streamsize>(floats.size() * sizeof(float)));
  if (!out) throw std::runtime_error(file.string() + ": cannot be written");
}

void decode(const fs::path& model, const fs::path& plan_file, const fs::path& out) {
  std::ifstream plan_in(plan_file);
  if (!plan_in) throw std::runtime_error(plan_file.string() + ": cannot be read");
  const nlohmann::json plan = nlohmann::json::parse(plan_in);
  const fs::path dir = plan_file.parent_path();

  // Warnings on: onnxruntime's TensorScatter says "in-place optimization not activated, copying past_cache to
  // present_cache" when its past and present are not one buffer, and that line must never show
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "decode_static");
  Ort::SessionOptions options;
  Ort::Session session(env, model.c_str(), options);
  static_cache::StaticCache cache(session, plan.at("batch").get<int64_t>());
  const float fill = plan.value("fill", 0.0f);
  std::fill(cache.keys().begin(), cache.keys().end(), fill);
  std::fill(cache.values().begin(), cache.values().end(), fill);
  fs::create_directories(out);

  const auto& steps = plan.at("steps");
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& step = steps[i];
    for (const auto& slot : step.value("reset", nlohmann::json::array())) cache.reset(slot.get<int64_t>());
    int64_t first = 0, rows = cache.batch();
    if (step.contains("slots")) {
      const auto slots = step.at("slots").get<std::vector<int64_t>>();
      if (slots.empty()) throw std::runtime_error("step " + std::to_string(i) + ": slots is empty");
      for (size_t s = 1; s < slots.size(); ++s) {
        if (slots[s] != slots[0] + static_cast<int64_t>(s)) {
          throw std::runtime_error("step " + std::to_string(i) + ": slots are not a contiguous run");
        }
      }
      first = slots.front();
      rows = static_cast<int64_t>(slots.size());
    }
    const int64_t q_len = step.at("q_len").get<int64_t>();
    const auto query = read_floats(dir / step.at("query").get<std::string>());
    const auto key = step.contains("key") ? read_floats(dir / step.at("key").get<std::string>()) : query;
    const auto value = step.contains("value") ? read_floats(dir / step.at("value").get<std::string>()) : query;
    const size_t expected = static_cast<size_t>(rows * q_len * cache.width());
    for (const auto* floats : {&query, &key, &value}) {
      if (floats->size() != expected) {
        throw std::runtime_error("step " + std::to_string(i) + ": " + std::to_string(floats->size()) +
                                 " floats where " + std::to_string(rows) + " x " + std::to_string(q_len) + " x " +
                                 std::to_string(cache.width()) + " = " + std::to_string(expected) + " were expected");
      }
    }
    const auto output = cache.step(query.data(), key.data(), value.data(), q_len, first, rows);
    write_floats(out / ("output_" + std::to_string(i) + ".f32"), output);
  }
  write_floats(out / "past_key.f32", cache.keys());
  write_floats(out / "past_value.f32", cache.values());
  const nlohmann::json summary = {
      {"runtime", "onnxruntime-cpp " + Ort::GetVersionString()},
      {"steps", steps.size()},
      {"lengths", cache.lengths()},
      {"heads", cache.heads()},
      {"max_len", cache.max_len()},
      {"d_k", cache.d_k()},
      {"written_in_place", true},  // every step's presents were the bound buffers (StaticCache::step checks)
      {"returned_copy", false},    // and nothing else: onnxruntime hands back the bound values themselves
  };
  std::ofstream(out / "summary.json") << summary.dump() << "\n";
  std::cout << "decode_static: " << steps.size() << " steps, lengths " << nlohmann::json(cache.lengths()).dump()
            << ", written in place" << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: decode_static MODEL.onnx PLAN.json OUT_DIR" << std::endl;
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
    decode(argv[1], argv[2], argv[3]);
  } catch (const std::exception& e) {
    std::cerr << "Error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
