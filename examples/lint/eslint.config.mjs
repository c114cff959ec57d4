// ESLint's recommended rules over every .js and .mjs file in examples/ (run scripts/lint-js.sh from the repository
// root). Patterns are relative to examples/ (basePath below), wherever eslint is started from.
//   Node, CommonJS:  examples/node/** (the service, verify.js, bench.js, their tests), examples/web/serve.js and
//                    examples/web/runner.js (the page's server, check-attn's web runner)
//   browser, ESM:    examples/web/page.mjs and examples/web/lib/*.mjs (loaded by index.html; nothing in Node
//                    imports them)
//   Node, ESM:       this file and formatter.mjs (scripts/lint-js.sh's)
// A new .js/.mjs file outside these gets the recommended rules without globals (require, window: no-undef): add it
// to the right list below. Every rule is js.configs.recommended's, as it ships: none is turned off or changed.
// Nothing is vendored outside node_modules: onnxruntime-web's dist/ is served from examples/web/node_modules.

import { fileURLToPath } from 'node:url';

import js from '@eslint/js';
import globals from 'globals';

// examples/, absolute: scripts/lint-js.sh passes --config, which would otherwise make the patterns relative to the cwd
const EXAMPLES = fileURLToPath(new URL('..', import.meta.url));

export default [
  {
    name: 'examples/ignores', // an object holding only ignores (and its base): ignored everywhere, never linted
    basePath: EXAMPLES,
    ignores: [
      '**/node_modules/', // installed packages (onnxruntime-web's dist/ among them): not ours to lint
      '**/*.min.js', '**/*.min.mjs', // minified copies, should one ever be vendored here
    ],
  },
  {
    name: 'examples/options',
    basePath: EXAMPLES,
    // not rules: a disable comment or inline config that no longer does anything is a finding too, not dead text
    linterOptions: { reportUnusedDisableDirectives: 'error', reportUnusedInlineConfigs: 'error' },
  },
  {
    ...js.configs.recommended,
    basePath: EXAMPLES,
    files: ['**/*.js', '**/*.mjs'],
  },
  {
    name: 'examples/node-commonjs',
    basePath: EXAMPLES,
    files: ['node/**/*.js', 'web/serve.js', 'web/runner.js'],
    languageOptions: { sourceType: 'commonjs', globals: globals.node },
  },
  {
    name: 'examples/browser-modules',
    basePath: EXAMPLES,
    files: ['web/page.mjs', 'web/lib/**/*.mjs'],
    languageOptions: { sourceType: 'module', globals: globals.browser },
  },
  {
    name: 'examples/node-modules',
    basePath: EXAMPLES,
    files: ['lint/*.mjs'],
    languageOptions: { sourceType: 'module', globals: globals.node },
  },
];
