// Validates an AsyncAPI document with the official parser (@asyncapi/parser):
//
//     node scripts/asyncapi/validate.mjs docs/asyncapi.yaml
//
// Prints every diagnostic (severity 0 error, 1 warning, 2 information, 3 hint) and exits 1 when
// there is an error or a warning (docs/asyncapi.yaml is kept warning-free), 2 when the file cannot
// be read, 0 otherwise. Install first: `npm ci` in scripts/asyncapi. tests/test_asyncapi.py runs it.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Parser } from '@asyncapi/parser';

const SEVERITIES = ['error', 'warning', 'information', 'hint'];

const file = process.argv[2];
if (!file) {
  console.error('usage: node scripts/asyncapi/validate.mjs FILE');
  process.exit(2);
}

let text;
try {
  text = await readFile(file, 'utf8');
} catch (err) {
  console.error(`${file}: ${err.message}`);
  process.exit(2);
}

const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source: path.resolve(file) });

const counts = [0, 0, 0, 0];
for (const d of diagnostics) {
  counts[d.severity] += 1;
  const where = d.path && d.path.length ? d.path.join('.') : '(document)';
  const line = d.range ? `:${d.range.start.line + 1}` : '';
  console.log(`${file}${line} ${SEVERITIES[d.severity] ?? d.severity} ${d.code} at ${where}: ${d.message}`);
}
const failed = document === undefined || counts[0] > 0 || counts[1] > 0;
console.log(
  `${file}: ${failed ? 'INVALID' : 'valid'} AsyncAPI ${document ? document.version() : '(not parsed)'}: ` +
    `${counts[0]} errors, ${counts[1]} warnings, ${counts[2]} information, ${counts[3]} hints`,
);
process.exit(failed ? 1 : 0);
