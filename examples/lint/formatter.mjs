// scripts/lint-js.sh's formatter: eslint's own (stylish) output, then, when nothing was found, one line counting the
// files linted. One eslint run gives both, rather than a second run for the count.
import { ESLint } from 'eslint';

export default async function format(results, context) {
  const stylish = await new ESLint({ cwd: context.cwd }).loadFormatter('stylish');
  const text = await stylish.format(results, context);
  const found = results.some((r) => r.messages.length > 0);
  return found ? text : `${text}eslint: examples/ clean (${results.length} files)`;
}
