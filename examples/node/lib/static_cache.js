'use strict';
// Decoding through a static cache in place with onnxruntime-node: the model of `export-attn --kv-cache --max-len N`
// (mha-static) steps on the buffers past_key/past_value (batch, heads, max_len, d_k) and returns them, the new
// tokens written at each sequence's length, as present_key/present_value. StaticCache holds the two buffers (one
// Float32Array each) and each slot's length, and hands onnxruntime the SAME memory as the past input and as the
// pre-allocated present output (session.run(feeds, fetches)), so the step writes the cache where it lies. As in
// Python's runtime_check/static_cache.py:
//
//   const cache = await StaticCache.create('static.onnx', 8);   // 8 slots
//   await cache.step(prompt, 5, { slots: [3] });   // a prefill of slot 3 alone: 5 tokens, (1, 5, E) flat
//   await cache.step(tokens, 1);                   // one token for every slot: (8, 1, E) in, (8, 1, E) out
//   cache.reset(3);                                // slot 3's sequence is done: the next one starts there
//
// What onnxruntime-node 1.30 does with it (docs/serving-node.md, "A static cache, decoded in place", measured there):
// - a feed or a pre-allocated fetch over a Float32Array is an OrtValue over that array's own memory
//   (js/node/src/tensor_helper.cc NapiValueToOrtValue: the ArrayBuffer's data at the view's byteOffset, no copy),
//   so past_key and present_key are one buffer and the step writes into it; a subarray (one slot's part) is
//   taken the same way, without a copy;
// - but every fetched output, a pre-allocated one too, comes back as a NEW Tensor over a new ArrayBuffer copied
//   from the output (OrtValueToNapiValue: ArrayBuffer::New and memcpy). A present must be fetched to be bound,
//   so each step also copies the stepped slots' whole buffers once each into garbage: the write is in place, the
//   step is not free of copies. The copy is not the cache: this class never reads it but to check the write.
// After each step the new positions of the buffers are compared with the returned copy: a binding that did not
// write into the caller's memory (that ignored the pre-allocated fetch) is an error here, never a wrong cache.

const ort = require('onnxruntime-node');

// A step would write past the cache's capacity: nothing is run, the buffers are as they were.
class CacheFullError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CacheFullError';
  }
}

// onnxruntime-node did not write the step into the caller's buffers.
class NotInPlaceError extends Error {
  constructor(message) {
    super(message);
    this.name = 'NotInPlaceError';
  }
}

class StaticCache {
  // The session of a static-cache model and the number of slots (sequences decoded side by side).
  constructor(session, batch) {
    const inputs = Object.fromEntries((session.inputMetadata || []).map((m) => [m.name, m]));
    if (!inputs.past_len || !inputs.past_key || !inputs.query) {
      throw new Error('the model is not a static-cache step (export-attn --kv-cache --max-len N): no past_len');
    }
    const [, heads, maxLen, dK] = inputs.past_key.shape;
    const width = inputs.query.shape[2];
    if (![heads, maxLen, dK, width].every(Number.isInteger)) {
      throw new Error(`the model's past_key is [${inputs.past_key.shape}] and query [${inputs.query.shape}]: ` +
        'heads, max_len, d_k and the embedding width must be fixed');
    }
    if (!Number.isInteger(batch) || batch < 1) throw new Error(`batch must be a positive integer, got ${batch}`);
    Object.assign(this, { session, batch, heads, maxLen, dK, width });
    this.slotSize = heads * maxLen * dK; // floats of one slot in one buffer
    this.buffers = { key: new Float32Array(batch * this.slotSize), value: new Float32Array(batch * this.slotSize) };
    this.lengths = new Array(batch).fill(0); // tokens held by each slot
    this.lastResult = null; // the last step's session.run result (its presents: the binding's copies)
  }

  static async create(modelPath, batch, options = {}) {
    return new StaticCache(await ort.InferenceSession.create(modelPath, options), batch);
  }

  // q_len new tokens for `slots` (every slot when absent; else a contiguous run, e.g. [3] or [2, 3]): query (and
  // key, value: self-attention when absent) Float32Arrays of (slots, qLen, E) floats, row-major. Writes their keys
  // and values into the buffers in place, advances the slots' lengths; resolves to the output (slots, qLen, E).
  async step(query, qLen, { key = query, value = query, slots = null } = {}) {
    const [first, stop] = this.slotRange(slots);
    const rows = stop - first;
    const expected = rows * qLen * this.width;
    if (!Number.isInteger(qLen) || qLen < 1) throw new Error(`qLen must be a positive integer, got ${qLen}`);
    for (const [name, array] of [['query', query], ['key', key], ['value', value]]) {
      if (!(array instanceof Float32Array) || array.length !== expected) {
        throw new Error(`${name}: a Float32Array of ${rows} x ${qLen} x ${this.width} = ${expected} floats expected, ` +
          `got ${array instanceof Float32Array ? array.length + ' floats' : typeof array}`);
      }
    }
    for (let slot = first; slot < stop; slot++) {
      if (this.lengths[slot] + qLen > this.maxLen) {
        throw new CacheFullError(`the cache is full: slot ${slot} holds ${this.lengths[slot]} of ${this.maxLen} tokens, ` +
          `a step of ${qLen} more does not fit (reset the slot, or export with a larger --max-len)`);
      }
    }
    const dims = [rows, qLen, this.width];
    const cache = [rows, this.heads, this.maxLen, this.dK];
    const past = {}; // the stepped slots' part of each buffer: a view, the same memory
    for (const name of ['key', 'value']) {
      past[name] = new ort.Tensor('float32', this.buffers[name].subarray(first * this.slotSize, stop * this.slotSize), cache);
    }
    const lengths = this.lengths.slice(first, stop);
    const feeds = {
      query: new ort.Tensor('float32', query, dims),
      key: new ort.Tensor('float32', key, dims),
      value: new ort.Tensor('float32', value, dims),
      past_key: past.key,
      past_value: past.value,
      past_len: new ort.Tensor('int64', BigInt64Array.from(lengths, BigInt), [rows]),
    };
    // Every output fetched, in the model's order: onnxruntime-node 1.30 names the results by the model's output
    // names in order (inference_session_wrap.cc), so a subset could come back under the wrong names.
    const fetches = { output: null, present_key: past.key, present_value: past.value };
    const result = await this.session.run(feeds, fetches);
    this.checkWritten(result, first, lengths, qLen);
    for (let slot = first; slot < stop; slot++) this.lengths[slot] += qLen;
    this.lastResult = result;
    return result.output.data;
  }

  // The new positions of the stepped slots, in the caller's buffers, against the copy the binding returned.
  checkWritten(result, first, lengths, qLen) {
    for (const [name, output] of [['key', 'present_key'], ['value', 'present_value']]) {
      const mine = this.buffers[name];
      const returned = result[output].data;
      if (returned.buffer === mine.buffer && returned.byteOffset === mine.byteOffset + first * this.slotSize * 4) {
        continue; // the binding handed back the caller's own memory: nothing to compare
      }
      lengths.forEach((length, row) => {
        for (let h = 0; h < this.heads; h++) {
          const at = row * this.slotSize + (h * this.maxLen + length) * this.dK; // within the stepped slots
          for (let i = 0; i < qLen * this.dK; i++) {
            if (!Object.is(mine[first * this.slotSize + at + i], returned[at + i])) {
              throw new NotInPlaceError(`onnxruntime-node did not write ${output} into the caller's buffer: slot ` +
                `${first + row}, head ${h}, position ${length + Math.floor(i / this.dK)} holds ` +
                `${mine[first * this.slotSize + at + i]} where the step returned ${returned[at + i]}`);
            }
          }
        }
      });
    }
  }

  // The contiguous slots [first, stop) a step addresses.
  slotRange(slots) {
    if (slots === null || slots === undefined) return [0, this.batch];
    const first = slots[0];
    const stop = slots[slots.length - 1] + 1;
    const contiguous = slots.length > 0 && slots.every((s, i) => s === first + i);
    if (!contiguous || !Number.isInteger(first) || first < 0 || stop > this.batch) {
      throw new Error(`slots [${slots}] are not a contiguous run of 0..${this.batch - 1}`);
    }
    return [first, stop];
  }

  // The slot's sequence is done: the next step writes a new one from position 0 (the old keys stay, never read).
  reset(slot) {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.batch) throw new Error(`no slot ${slot} in 0..${this.batch - 1}`);
    this.lengths[slot] = 0;
  }

  // The slot's valid keys or values (heads, length, d_k), copied out of the buffer (name: 'key' or 'value').
  valid(name, slot) {
    const length = this.lengths[slot];
    const out = new Float32Array(this.heads * length * this.dK);
    for (let h = 0; h < this.heads; h++) {
      const from = slot * this.slotSize + h * this.maxLen * this.dK;
      out.set(this.buffers[name].subarray(from, from + length * this.dK), h * length * this.dK);
    }
    return out;
  }
}

module.exports = { CacheFullError, NotInPlaceError, StaticCache };
