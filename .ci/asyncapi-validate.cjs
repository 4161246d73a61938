// Validates AsyncAPI documents with the AsyncAPI Initiative's own parser
// (@asyncapi/parser, installed by .ci/run under target/asyncapi/).
//
//   node .ci/asyncapi-validate.cjs <parser-package-dir> <document.json>...
//
// Prints every diagnostic and exits 1 if any has error severity (or a
// document cannot be read or parsed), 0 otherwise.
"use strict";

const fs = require("fs");
const path = require("path");

async function main() {
  const [parserDir, ...documents] = process.argv.slice(2);
  if (!parserDir || documents.length === 0) {
    console.error("usage: asyncapi-validate.cjs <parser-package-dir> <document.json>...");
    return 2;
  }
  const { Parser, DiagnosticSeverity } = require(path.resolve(parserDir));
  const parser = new Parser();
  const names = Object.fromEntries(
    Object.entries(DiagnosticSeverity).map(([name, value]) => [value, name.toLowerCase()]),
  );
  let failed = false;
  for (const file of documents) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (e) {
      console.error(`${file}: cannot read: ${e.message}`);
      failed = true;
      continue;
    }
    const { document, diagnostics } = await parser.parse(text, { source: path.resolve(file) });
    let errors = 0;
    for (const d of diagnostics) {
      const where = (d.path || []).join("/");
      console.log(`${file}: ${names[d.severity] || d.severity}: ${d.code}: ${d.message} at /${where}`);
      if (d.severity === DiagnosticSeverity.Error) {
        errors += 1;
      }
    }
    if (!document || errors > 0) {
      console.log(`${file}: INVALID (${errors} error(s))`);
      failed = true;
    } else {
      console.log(`${file}: valid AsyncAPI ${document.version()}, ${document.channels().length} channels, ${document.operations().length} operations, ${diagnostics.length} diagnostic(s) below error`);
    }
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`validation failed: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
