// Decoding through a static cache in place with onnxruntime's C++ API: the model of `export-attn --kv-cache
// --max-len N` (mha-static) steps on the buffers past_key/past_value (batch, heads, max_len, d_k) and returns them,
// the new tokens written at each sequence's length, as present_key/present_value. StaticCache owns the two
// buffers and each slot's length; a step binds (Ort::IoBinding) one Ort::Value over the buffer, made with
// Ort::Value::CreateTensor over the caller's memory, as both the past input and the present output, so
// onnxruntime writes the cache where it lies: no copy of the cache and no allocation for it per token. As
// Python's runtime_check/static_cache.py and Node's examples/node/lib/static_cache.js:
//
//   Ort::Session session(env, "static.onnx", options);
//   static_cache::StaticCache cache(session, 8);      // 8 slots
//   cache.step(prompt, prompt, prompt, 5, 3, 1);        // a prefill of slot 3 alone: 5 tokens, (1, 5, E)
//   cache.step(tokens, tokens, tokens, 1, 0, 8);        // one token for every slot: (8, 1, E) in and out
//   cache.reset(3);                                     // slot 3's sequence is done: the next starts there
//
// After each run the presents onnxruntime hands back must be the caller's buffers (the same address): a run that
// replaced them with memory of its own is NotInPlaceError, never a silently stale cache.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT  // main() checks that the library serves the headers' API version before using it
#endif
#include <onnxruntime_cxx_api.h>

namespace static_cache {

// A step would write past the cache's capacity: nothing is run, the buffers are as they were.
struct CacheFullError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// onnxruntime returned a present that is not the caller's buffer.
struct NotInPlaceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class StaticCache {
 public:
  // The session of a static-cache model (kept by reference: it must outlive the cache) and the number of slots.
  StaticCache(Ort::Session& session, int64_t batch);

  // q_len new tokens for the slots [first, first + rows): query, key and value hold rows * q_len * E floats each,
  // row-major (pass query three times for self-attention). Writes their keys and values into the buffers in place,
  // advances the slots' lengths; returns the output, rows * q_len * E floats. CacheFullError before any work where
  // a slot's length + q_len exceeds max_len.
  std::vector<float> step(const float* query, const float* key, const float* value, int64_t q_len, int64_t first,
                          int64_t rows);

  // The slot's sequence is done: the next step writes a new one from position 0 (its old keys stay, never read).
  void reset(int64_t slot);

  int64_t batch() const { return batch_; }
  int64_t heads() const { return heads_; }
  int64_t max_len() const { return max_len_; }
  int64_t d_k() const { return d_k_; }
  int64_t width() const { return width_; }
  const std::vector<int64_t>& lengths() const { return lengths_; }
  // The whole buffers (batch, heads, max_len, d_k): the cache itself, written by every step.
  std::vector<float>& keys() { return key_; }
  std::vector<float>& values() { return value_; }

 private:
  Ort::Session& session_;
  Ort::MemoryInfo memory_;
  int64_t batch_, heads_, max_len_, d_k_, width_, slot_size_;
  std::vector<float> key_, value_;
  std::vector<int64_t> lengths_;
};

}  // namespace static_cache
