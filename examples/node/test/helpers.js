'use strict';
// The bundle the tests run on: ATTN_ONNX_BUNDLE (the Python test suite sets it to a bundle it exported).

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const BUNDLE = process.env.ATTN_ONNX_BUNDLE;
const SKIP = BUNDLE ? false : 'set ATTN_ONNX_BUNDLE to a bundle folder (export-attn --bundle DIR)';

// A copy of the bundle to tamper with.
function copyBundle() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'attn-bundle-'));
  fs.cpSync(BUNDLE, dir, { recursive: true });
  return dir;
}

module.exports = { BUNDLE, SKIP, copyBundle };
