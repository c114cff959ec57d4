// The bundle manifest's JSON Schema (deploy/manifest.schema.json, which serve.js serves at /manifest.schema.json)
// applied in the browser: the schema Python's read_manifest, Node's readManifest and the C++ verifier validate
// against, so that all require the same fields. A validator for the keywords that schema uses (draft 2020-12), the
// twin of examples/cpp/schema.cc; a schema with any other keyword is refused rather than half-applied. The first
// problem by position in the document, worded as Python words it: `decode.steps[1] lacks 'inputs'`.

const ANNOTATIONS = new Set(['$schema', '$id', '$comment', '$defs', 'title', 'description', 'default', 'examples',
  'format', 'deprecated', 'readOnly', 'writeOnly']);
const KEYWORDS = new Set(['$ref', 'type', 'enum', 'const', 'required', 'properties', 'additionalProperties', 'items',
  'minItems', 'maxItems', 'uniqueItems', 'minLength', 'maxLength', 'pattern', 'minimum', 'maximum',
  'exclusiveMinimum', 'exclusiveMaximum', 'allOf', 'anyOf', 'oneOf', 'not']);
const KINDS = { array: 'a list', object: 'an object', number: 'a number', integer: 'an integer', string: 'a string' };

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const shown = (v) => (typeof v === 'string' ? `'${v}'` : JSON.stringify(v));

function hasType(v, type) {
  switch (type) {
    case 'object': return isObject(v);
    case 'array': return Array.isArray(v);
    case 'string': return typeof v === 'string';
    case 'number': return typeof v === 'number';
    case 'integer': return typeof v === 'number' && Number.isInteger(v);
    case 'boolean': return typeof v === 'boolean';
    case 'null': return v === null;
    default: throw new Error(`the manifest schema names an unknown type '${type}'`);
  }
}

function resolve(root, ref) {
  if (!ref.startsWith('#')) throw new Error(`the manifest schema refers outside itself: ${ref}`);
  return ref.slice(1).split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((node, key) => node[key], root);
}

function check(root, schema, v, where, out) {
  if (typeof schema === 'boolean') {
    if (!schema) out.push({ where: [...where], text: 'is not allowed here', colon: false });
    return;
  }
  const say = (text) => out.push({ where: [...where], text, colon: true });
  const descend = (step, sub, item) => {
    where.push(step);
    check(root, sub, item, where, out);
    where.pop();
  };
  const valid = (sub) => {
    const found = [];
    check(root, sub, v, where, found);
    return found.length === 0;
  };
  for (const [keyword, value] of Object.entries(schema)) {
    if (ANNOTATIONS.has(keyword)) continue;
    if (!KEYWORDS.has(keyword)) throw new Error(`the manifest schema uses '${keyword}', which this reader does not implement`);
    switch (keyword) {
      case '$ref': check(root, resolve(root, value), v, where, out); break;
      case 'type': {
        const types = [].concat(value);
        if (!types.some((t) => hasType(v, t))) {
          out.push({ where: [...where], text: `is not ${types.map((t) => KINDS[t] || t).join(' or ')}`, colon: false });
        }
        break;
      }
      case 'enum': if (!value.some((o) => same(o, v))) say(`${shown(v)} is not one of ${JSON.stringify(value)}`); break;
      case 'const': if (!same(value, v)) say(`${JSON.stringify(value)} was expected`); break;
      case 'required': {
        if (!isObject(v)) break;
        const missing = value.filter((key) => !Object.prototype.hasOwnProperty.call(v, key));
        if (missing.length) out.push({ where: [...where], text: `lacks ${missing.map((k) => `'${k}'`).join(', ')}`, colon: false });
        break;
      }
      case 'properties':
        if (!isObject(v)) break;
        for (const [key, sub] of Object.entries(value)) {
          if (Object.prototype.hasOwnProperty.call(v, key)) descend({ index: false, text: key }, sub, v[key]);
        }
        break;
      case 'additionalProperties':
        if (!isObject(v)) break;
        for (const [key, item] of Object.entries(v)) {
          if (!(schema.properties && Object.prototype.hasOwnProperty.call(schema.properties, key))) {
            descend({ index: false, text: key }, value, item);
          }
        }
        break;
      case 'items':
        if (Array.isArray(v)) v.forEach((item, k) => descend({ index: true, text: String(k) }, value, item));
        break;
      case 'minItems': if (Array.isArray(v) && v.length < value) say(`${JSON.stringify(v)} ${v.length ? 'is too short' : 'should be non-empty'}`); break;
      case 'maxItems': if (Array.isArray(v) && v.length > value) say(`${JSON.stringify(v)} is too long`); break;
      case 'uniqueItems':
        if (Array.isArray(v) && value && v.some((a, i) => v.some((b, j) => j > i && same(a, b)))) {
          say(`${JSON.stringify(v)} has non-unique elements`);
        }
        break;
      case 'minLength': if (typeof v === 'string' && [...v].length < value) say(`${shown(v)} ${v.length ? 'is too short' : 'should be non-empty'}`); break;
      case 'maxLength': if (typeof v === 'string' && [...v].length > value) say(`${shown(v)} is too long`); break;
      case 'pattern': if (typeof v === 'string' && !new RegExp(value, 'u').test(v)) say(`${shown(v)} does not match '${value}'`); break;
      case 'minimum': if (typeof v === 'number' && !(v >= value)) say(`${v} is less than the minimum of ${value}`); break;
      case 'maximum': if (typeof v === 'number' && !(v <= value)) say(`${v} is greater than the maximum of ${value}`); break;
      case 'exclusiveMinimum': if (typeof v === 'number' && !(v > value)) say(`${v} is less than or equal to the minimum of ${value}`); break;
      case 'exclusiveMaximum': if (typeof v === 'number' && !(v < value)) say(`${v} is greater than or equal to the maximum of ${value}`); break;
      case 'allOf': for (const sub of value) check(root, sub, v, where, out); break;
      case 'anyOf':
      case 'oneOf': {
        const matched = value.filter((sub) => valid(sub)).length;
        if (matched === 0) say(`${JSON.stringify(v)} is not valid under any of the given schemas`);
        else if (keyword === 'oneOf' && matched > 1) say(`${JSON.stringify(v)} is valid under each of several given schemas`);
        break;
      }
      case 'not': if (valid(value)) say(`${JSON.stringify(v)} should not be valid under ${JSON.stringify(value)}`); break;
      default: break;
    }
  }
}

function describe(where) {
  const text = where.map((s) => (s.index ? `[${s.text}]` : `.${s.text}`)).join('').replace(/^\./, '');
  return text || 'the manifest';
}

// The first way `manifest` breaks `schema`, in Python's words, or null
export function schemaProblem(schema, manifest) {
  const problems = [];
  check(schema, schema, manifest, [], problems);
  if (!problems.length) return null;
  const before = (a, b) => { // the shallowest, then by its path's parts as text (as Python sorts)
    if (a.where.length !== b.where.length) return a.where.length < b.where.length;
    for (let k = 0; k < a.where.length; k++) {
      if (a.where[k].text !== b.where[k].text) return a.where[k].text < b.where[k].text;
    }
    return false;
  };
  const first = problems.reduce((best, p) => (before(p, best) ? p : best));
  return `${describe(first.where)}${first.colon ? ': ' : ' '}${first.text}`;
}
