#!/usr/bin/env node
'use strict';
// node serve.js --bundle DIR | --corpus DIR [--port N] [--results FILE]
// Serves the bundle-verifying page on 127.0.0.1 only, with nothing from a CDN:
//   /            index.html, page.mjs, lib/*.mjs (this folder)
//   /node_modules/onnxruntime-web/dist/   onnxruntime-web, from this folder's node_modules (.wasm as
//                application/wasm); nothing else of node_modules
//   /manifest.schema.json   the bundle format's JSON Schema (deploy/; ATTN_ONNX_MANIFEST_SCHEMA names a copy)
//   /bundle/     the bundle DIR (manifest.json, model.onnx, the golden vectors)
//   /corpus/     with --corpus: DIR/index.json, and each folder of DIR as a bundle of its own at /corpus/NAME/
//                (open the page at /?corpus=/corpus/ to verify them all in one load)
// A file whose target, symlinks resolved, leaves its bundle (or DIR's folder) gets 403; a missing one 404.
// Every response carries COOP same-origin and COEP require-corp: the page is cross-origin isolated, which
// onnxruntime-web's WASM threads need (SharedArrayBuffer). The page POSTs its results to /results; they are
// written to FILE (atomically) and summarised on stdout. Port 0 (the default) takes a free port; the first
// line printed is the address. Stop it with SIGTERM or Ctrl-C. Exit 2 for a bad option, 1 for a missing
// bundle or package, or a port in use.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const HERE = __dirname;
const ORT_ROUTE = '/node_modules/onnxruntime-web/dist/';
const ORT_DIST = path.join(HERE, 'node_modules', 'onnxruntime-web', 'dist');
const PAGE_FILES = new Set(['index.html', 'page.mjs', 'lib/bundle.mjs', 'lib/draw.mjs', 'lib/schema.mjs']);
const SCHEMA_FILE = process.env.ATTN_ONNX_MANIFEST_SCHEMA
  || path.join(HERE, '..', '..', 'deploy', 'manifest.schema.json');
const MAX_RESULTS_BYTES = 4 * 1024 * 1024;
const TYPES = {
  '.html': 'text/html; charset=utf-8', '.mjs': 'text/javascript', '.js': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.map': 'application/json',
  '.png': 'image/png', '.onnx': 'application/octet-stream', '.pb': 'application/octet-stream',
  '.data': 'application/octet-stream',
};
const ISOLATION = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'Cache-Control': 'no-store', // a bundle changed on disk is fetched again, never taken from a cache
  'X-Content-Type-Options': 'nosniff',
};

function parseArgs(argv) {
  const usage = 'usage: node serve.js --bundle DIR | --corpus DIR [--port N] [--results FILE]';
  const options = { port: 0, bundle: null, corpus: null, results: null };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined || !['--port', '--bundle', '--corpus', '--results'].includes(flag)) throw new Error(usage);
    options[flag.slice(2)] = flag === '--port' ? Number(value) : value;
  }
  if (!options.bundle === !options.corpus) throw new Error(usage);
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new Error(`--port must be 0..65535; got ${options.port}`);
  }
  return options;
}

// The bundle and onnxruntime-web are there: a message for what is not (exit 1, like any bad file)
function missing(options) {
  if (options.bundle && !fs.existsSync(path.join(options.bundle, 'manifest.json'))) {
    return `${options.bundle} is not a bundle: it has no manifest.json`;
  }
  if (options.corpus && !fs.existsSync(path.join(options.corpus, 'index.json'))) {
    return `${options.corpus} is not a corpus: it has no index.json`;
  }
  if (!fs.existsSync(path.join(ORT_DIST, 'ort.wasm.min.mjs'))) {
    return 'onnxruntime-web is not installed here: run `npm ci --ignore-scripts --prefix examples/web`';
  }
  return null;
}

// The file `relative` names inside `root`, symlinks resolved: 403 where it would leave root (.., a symlink out),
// 404 where it is absent or not a file.
function inside(root, relative) {
  let realRoot;
  try {
    realRoot = fs.realpathSync(root);
  } catch {
    return 404;
  }
  const lexical = path.resolve(realRoot, relative);
  if (!lexical.startsWith(realRoot + path.sep)) return 403;
  let file;
  try {
    file = fs.realpathSync(lexical);
  } catch {
    return 404;
  }
  if (!file.startsWith(realRoot + path.sep)) return 403;
  return fs.statSync(file).isFile() ? file : 404;
}

// The file a request's path names, or the status to answer instead
function resolve(url, options) {
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(url, 'http://127.0.0.1').pathname);
  } catch {
    return 404;
  }
  if (pathname === '/') return path.join(HERE, 'index.html');
  if (pathname === '/manifest.schema.json') return SCHEMA_FILE;
  if (pathname.startsWith(ORT_ROUTE)) return inside(ORT_DIST, pathname.slice(ORT_ROUTE.length));
  if (options.bundle && pathname.startsWith('/bundle/')) return inside(options.bundle, pathname.slice(8));
  if (options.corpus && pathname.startsWith('/corpus/')) { // each folder a bundle of its own
    const rest = pathname.slice(8);
    if (rest === 'index.json') return inside(options.corpus, rest);
    const slash = rest.indexOf('/');
    const name = rest.slice(0, slash);
    if (slash <= 0 || name === '.' || name === '..') return 404;
    return inside(path.join(options.corpus, name), rest.slice(slash + 1));
  }
  return PAGE_FILES.has(pathname.slice(1)) ? path.join(HERE, pathname.slice(1)) : 404;
}

function send(res, status, text) {
  res.writeHead(status, { ...ISOLATION, 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(text);
}

function receiveResults(req, res, file) {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_RESULTS_BYTES) {
      send(res, 413, 'results too large\n');
      req.destroy();
    } else chunks.push(chunk);
  });
  req.on('end', () => {
    if (size > MAX_RESULTS_BYTES) return;
    const body = Buffer.concat(chunks).toString('utf8');
    let results;
    try {
      results = JSON.parse(body);
    } catch {
      send(res, 400, 'results are not JSON\n');
      return;
    }
    if (file) {
      const temp = `${file}.${process.pid}.tmp`;
      fs.writeFileSync(temp, body);
      fs.renameSync(temp, file);
    }
    console.log(results.error ? `results: Error: ${results.error}` : `results: ${results.passed} passed, ${results.failed} failed`);
    send(res, 204, '');
  });
}

function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(err.message.startsWith('usage') ? err.message : `Error: ${err.message}`);
    process.exit(2);
  }
  const problem = missing(options);
  if (problem) {
    console.error(`Error: ${problem}`);
    process.exit(1);
  }
  const server = http.createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/results') return receiveResults(req, res, options.results);
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'method not allowed\n');
    const file = resolve(req.url, options);
    if (file === 403) return send(res, 403, 'outside the bundle\n');
    if (file === 404) return send(res, 404, 'not found\n');
    const type = TYPES[path.extname(file)] || 'application/octet-stream';
    res.writeHead(200, { ...ISOLATION, 'Content-Type': type, 'Content-Length': fs.statSync(file).size });
    if (req.method === 'HEAD') return res.end();
    fs.createReadStream(file).on('error', () => res.destroy()).pipe(res);
  });
  server.on('error', (err) => {
    console.error(`Error: ${err.message}`);
    process.exit(1);
  });
  server.listen(options.port, '127.0.0.1', () => {
    const what = options.bundle ? `bundle ${path.resolve(options.bundle)}` : `corpus ${path.resolve(options.corpus)}`;
    console.log(`serving http://127.0.0.1:${server.address().port}/ (${what})`);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0)); // open keep-alives too
}

main();
