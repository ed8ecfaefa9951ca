// What both TypeScript programs share: the run's inputs from the environment and the observations they print
// as one JSON line for the Python test to check. Written as an API user would, with no casts.
import { readFileSync } from "node:fs";

export interface Inputs {
  baseUrl: string;
  apiKey: string;
  photo: Blob;
  imageUrl: string;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

export function inputs(): Inputs {
  return {
    baseUrl: required("REMOVAI_BASE_URL"),
    apiKey: required("REMOVAI_API_KEY"),
    photo: new Blob([readFileSync(required("REMOVAI_PHOTO"))], { type: "image/jpeg" }),
    imageUrl: required("REMOVAI_IMAGE_URL"),
  };
}

// The first bytes of a body, hex: the test tells PNG, WEBP and JPEG apart by them.
export async function magic(body: Blob): Promise<string> {
  return Buffer.from(await body.slice(0, 12).arrayBuffer()).toString("hex");
}

// Splits an output_url into the download operation's path and query parameters.
export function signedLink(outputUrl: string): { name: string; expires: number; signature: string } {
  const url = new URL(outputUrl);
  return {
    name: url.pathname.split("/").pop() ?? "",
    expires: Number(url.searchParams.get("expires")),
    signature: url.searchParams.get("signature") ?? "",
  };
}

export async function poll<T>(read: () => Promise<T | undefined>, attempts = 240): Promise<T> {
  for (let attempt = 0; attempt < attempts; attempt++) {
    const done = await read();
    if (done !== undefined) return done;
    await new Promise((resume) => setTimeout(resume, 250));
  }
  throw new Error("gave up waiting");
}

export function report(observed: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(observed) + "\n");
}
