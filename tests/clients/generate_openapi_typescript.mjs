// Generates generated/openapi-typescript/schema.ts from a document with openapi-typescript's Node API and two
// documented options: `format: binary` typed as Blob (the transform its documentation gives for uploads; the
// default is string, which fetch cannot upload), and defaultNonNullable off, so that a request field with a
// default stays optional (on, the default, makes every such field required in request bodies too).
// Usage: node generate_openapi_typescript.mjs DOCUMENT OUTPUT
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import openapiTS, { astToString } from "openapi-typescript";
import ts from "typescript";

const [document, output] = process.argv.slice(2);
const BLOB = ts.factory.createTypeReferenceNode(ts.factory.createIdentifier("Blob"));
const ast = await openapiTS(JSON.parse(readFileSync(document, "utf8")), {
  defaultNonNullable: false,
  transform(schemaObject) {
    if (schemaObject.format === "binary") return BLOB;
    return undefined;
  },
});
mkdirSync(dirname(output), { recursive: true });
writeFileSync(output, astToString(ast));
