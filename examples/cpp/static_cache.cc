// static_cache.h: a static cache stepped in place through Ort::IoBinding.

#include "static_cache.h"

#include <array>
#include <map>
#include <sstream>

namespace static_cache {

namespace {

// name -> shape of the session's inputs (-1 where a dim is free)
std::map<std::string, std::vector<int64_t>> input_shapes(Ort::Session& session) {
  Ort::AllocatorWithDefaultOptions allocator;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (size_t i = 0; i < session.GetInputCount(); ++i) {
    const std::string name = session.GetInputNameAllocated(i, allocator).get();
    shapes[name] = session.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
  }
  return shapes;
}

std::string joined(const std::vector<int64_t>& dims) {
  std::ostringstream out;
  for (size_t i = 0; i < dims.size(); ++i) out << (i ? ", " : "") << dims[i];
  return "[" + out.str() + "]";
}

}  // namespace

StaticCache::StaticCache(Ort::Session& session, int64_t batch)
    : session_(session), memory_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)), batch_(batch) {
  const auto shapes = input_shapes(session);
  if (!shapes.count("past_len") || !shapes.count("past_key") || !shapes.count("query")) {
    throw std::runtime_error("the model is not a static-cache step (export-attn --kv-cache --max-len N): no past_len");
  }
  const auto& cache = shapes.at("past_key");
  const auto& query = shapes.at("query");
  if (cache.size() != 4 || query.size() != 3 || cache[1] < 1 || cache[2] < 1 || cache[3] < 1 || query[2] < 1) {
    throw std::runtime_error("the model's past_key is " + joined(cache) + " and query " + joined(query) +
                             ": heads, max_len, d_k and the embedding width must be fixed");
  }
  if (batch < 1) throw std::runtime_error("batch must be at least 1, got " + std::to_string(batch));
  heads_ = cache[1];
  max_len_ = cache[2];
  d_k_ = cache[3];
  width_ = query[2];
  slot_size_ = heads_ * max_len_ * d_k_;
  key_.assign(static_cast<size_t>(batch_ * slot_size_), 0.0f);
  value_.assign(key_.size(), 0.0f);
  lengths_.assign(static_cast<size_t>(batch_), 0);
}

std::vector<float> StaticCache::step(const float* query, const float* key, const float* value, int64_t q_len,
                                     int64_t first, int64_t rows) {
  if (first < 0 || rows < 1 || first + rows > batch_) {
    throw std::runtime_error("slots " + std::to_string(first) + ".." + std::to_string(first + rows - 1) +
                             " are not a run of 0.." + std::to_string(batch_ - 1));
  }
  if (q_len < 1) throw std::runtime_error("q_len must be at least 1, got " + std::to_string(q_len));
  for (int64_t slot = first; slot < first + rows; ++slot) {
    if (lengths_[slot] + q_len > max_len_) {
      throw CacheFullError("the cache is full: slot " + std::to_string(slot) + " holds " +
                           std::to_string(lengths_[slot]) + " of " + std::to_string(max_len_) + " tokens, a step of " +
                           std::to_string(q_len) + " more does not fit (reset the slot, or export with a larger "
                           "--max-len)");
    }
  }
  const std::array<int64_t, 3> dims{rows, q_len, width_};
  const size_t count = static_cast<size_t>(rows * q_len * width_);
  const std::array<int64_t, 4> cache_dims{rows, heads_, max_len_, d_k_};
  const size_t cache_count = static_cast<size_t>(rows * slot_size_);
  std::vector<int64_t> past_len(lengths_.begin() + first, lengths_.begin() + first + rows);
  std::vector<float> output(count);

  // Every Ort::Value is a view of memory the caller (or this class) owns: CreateTensor copies nothing. The inputs
  // are only read (onnxruntime takes a non-const pointer for every tensor).
  auto view = [&](const float* data, size_t n, const int64_t* shape, size_t rank) {
    return Ort::Value::CreateTensor<float>(memory_, const_cast<float*>(data), n, shape, rank);
  };
  Ort::Value q = view(query, count, dims.data(), dims.size());
  Ort::Value k = view(key, count, dims.data(), dims.size());
  Ort::Value v = view(value, count, dims.data(), dims.size());
  float* key_rows = key_.data() + first * slot_size_;  // the stepped slots' part of each buffer
  float* value_rows = value_.data() + first * slot_size_;
  Ort::Value past_key = view(key_rows, cache_count, cache_dims.data(), cache_dims.size());
  Ort::Value past_value = view(value_rows, cache_count, cache_dims.data(), cache_dims.size());
  const std::array<int64_t, 1> len_dims{rows};
  Ort::Value lengths =
      Ort::Value::CreateTensor<int64_t>(memory_, past_len.data(), past_len.size(), len_dims.data(), len_dims.size());
  Ort::Value out = view(output.data(), count, dims.data(), dims.size());

  Ort::IoBinding binding(session_);
  binding.BindInput("query", q);
  binding.BindInput("key", k);
  binding.BindInput("value", v);
  binding.BindInput("past_key", past_key);
  binding.BindInput("past_value", past_value);
  binding.BindInput("past_len", lengths);
  binding.BindOutput("output", out);
  binding.BindOutput("present_key", past_key);  // the same Ort::Value as the input: the step writes in place
  binding.BindOutput("present_value", past_value);
  session_.Run(Ort::RunOptions{nullptr}, binding);

  // What onnxruntime hands back as each output must be the memory bound to it: not replaced by its own.
  const std::vector<std::string> names = binding.GetOutputNames();
  std::vector<Ort::Value> results = binding.GetOutputValues();
  const std::map<std::string, const float*> bound{
      {"output", output.data()}, {"present_key", key_rows}, {"present_value", value_rows}};
  for (size_t i = 0; i < names.size(); ++i) {
    const float* got = results[i].GetTensorData<float>();
    if (got != bound.at(names[i])) {
      std::ostringstream message;
      message << "onnxruntime did not write " << names[i] << " into the bound buffer (" << bound.at(names[i])
              << "): it returned memory of its own (" << got << ")";
      throw NotInPlaceError(message.str());
    }
  }
  for (int64_t slot = first; slot < first + rows; ++slot) lengths_[slot] += q_len;
  return output;
}

void StaticCache::reset(int64_t slot) {
  if (slot < 0 || slot >= batch_) {
    throw std::runtime_error("no slot " + std::to_string(slot) + " in 0.." + std::to_string(batch_ - 1));
  }
  lengths_[slot] = 0;
}

}  // namespace static_cache
