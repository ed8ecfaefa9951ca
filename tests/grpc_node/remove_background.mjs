// A Node.js caller of the inference service, written the way a team in another language would: @grpc/grpc-js
// with @grpc/proto-loader loading protos/ as they are (no generated code of ours), the image streamed in
// 1 MiB chunks with back-pressure, the cut-out streamed back into a file. A failure is read as its gRPC status
// code, its message, and the google.rpc.Status in the "grpc-status-details-bin" trailer with its ErrorInfo.
//
//   node remove_background.mjs --target HOST:PORT --input photo.jpg --output cutout.png
//        [--format png|jpg|webp] [--size original|small|medium|large] [--bg-color '#RRGGBB'] [--model NAME]
//        [--deadline-s 60]
//
// Prints one JSON object on stdout: {"ok": true, "metadata": {...}, "received_bytes": N} and exit 0, or
// {"ok": false, "code": 8, "code_name": "RESOURCE_EXHAUSTED", "details": "...", "error_info": {...} | null}
// and exit 1; exit 2 for bad arguments.

import { createReadStream, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const PROTOS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "protos");
const CHUNK_BYTES = 1024 * 1024;

// google.rpc.Status and google.rpc.ErrorInfo as googleapis defines them (google/rpc/status.proto,
// error_details.proto); Any spelled out with the same field numbers, so no well-known-type import is needed.
const RICH_STATUS = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`, { keepCase: true }).root;
const STATUS = RICH_STATUS.lookupType("google.rpc.Status");
const ERROR_INFO = RICH_STATUS.lookupType("google.rpc.ErrorInfo");

function usage(message) {
  process.stderr.write(`remove_background.mjs: ${message}\n`);
  process.exit(2);
}

const { values: args } = parseArgs({
  options: {
    target: { type: "string" },
    input: { type: "string" },
    output: { type: "string" },
    format: { type: "string", default: "png" },
    size: { type: "string", default: "original" },
    "bg-color": { type: "string", default: "" },
    model: { type: "string", default: "" },
    "deadline-s": { type: "string", default: "60" },
  },
});
for (const name of ["target", "input", "output"]) {
  if (!args[name]) usage(`--${name} is required`);
}

const definition = protoLoader.loadSync("removai/v1/inference.proto", {
  includeDirs: [PROTOS],
  keepCase: true,
  enums: String,
  longs: Number,
  defaults: true,
  oneofs: true,
});
const removai = grpc.loadPackageDefinition(definition).removai.v1;
const client = new removai.BackgroundRemoval(args.target, grpc.credentials.createInsecure());

function errorInfo(error) {
  const [raw] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!raw) return null;
  const status = STATUS.decode(raw);
  for (const detail of status.details) {
    if (detail.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
      const info = ERROR_INFO.decode(detail.value);
      return { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } };
    }
  }
  return null;
}

function codeName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) ?? String(code);
}

async function send(call) {
  call.write({
    options: {
      output_format: `OUTPUT_FORMAT_${args.format.toUpperCase()}`,
      output_size: `OUTPUT_SIZE_${args.size.toUpperCase()}`,
      bg_color: args["bg-color"],
      model: args.model,
      request_id: `node-${process.pid}`,
    },
  });
  for await (const chunk of createReadStream(args.input, { highWaterMark: CHUNK_BYTES })) {
    if (!call.write({ chunk })) {
      await new Promise((resolve) => call.once("drain", resolve));
    }
  }
  call.end();
}

const result = await new Promise((resolve) => {
  const deadline = new Date(Date.now() + Number(args["deadline-s"]) * 1000);
  const call = client.RemoveBackground({ deadline });
  let metadata = null;
  const chunks = [];
  call.on("data", (message) => {
    if (message.part === "metadata") metadata = message.metadata;
    else chunks.push(message.chunk);
  });
  call.on("error", (error) => {
    resolve({
      ok: false, code: error.code, code_name: codeName(error.code), details: error.details,
      error_info: errorInfo(error),
    });
  });
  // The call's status, not the end of the stream, says it succeeded (a failed call ends its stream too).
  call.on("status", (status) => {
    if (status.code !== grpc.status.OK) return;
    const cutout = Buffer.concat(chunks);
    writeFileSync(args.output, cutout);
    resolve({ ok: true, metadata, received_bytes: cutout.length });
  });
  // A write after the call failed (the service refused early) is dropped by grpc-js; the status still arrives.
  send(call).catch(() => {});
});

client.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(result.ok ? 0 : 1);
