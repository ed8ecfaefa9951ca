// A program written against openapi-typescript's types of the served document (generated/openapi-typescript) with
// openapi-fetch: upload, batch of files, batch of URLs, get, download, the image answer and a wrong key. No casts.
import createClient from "openapi-fetch";
import type { paths } from "./generated/openapi-typescript/schema";
import { inputs, magic, poll, report, signedLink } from "./shared";

// Multipart bodies: openapi-fetch sends JSON unless told otherwise. Arrays become one field per item (`files`).
function formData(body: object): FormData {
  const form = new FormData();
  for (const [name, value] of Object.entries(body)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item instanceof Blob) form.append(name, item);
      else if (item !== undefined && item !== null) form.append(name, String(item));
    }
  }
  return form;
}

async function main(): Promise<void> {
  const { baseUrl, apiKey, photo, imageUrl } = inputs();
  // "application/json": the envelope's type where an operation can also answer an image.
  const api = createClient<paths, "application/json">({ baseUrl, headers: { "X-API-Key": apiKey } });

  const uploaded = await api.POST("/v1/remove-background/file", {
    body: { file: photo, output_format: "webp" }, bodySerializer: formData,
  });
  if (!uploaded.data) throw new Error(`upload: ${uploaded.response.status} ${JSON.stringify(uploaded.error)}`);
  const image = uploaded.data.data;

  const filesBatch = await api.POST("/v1/remove-background/batch/files", {
    body: { files: [photo, photo], output_format: "jpg" }, bodySerializer: formData,
  });
  if (!filesBatch.data) throw new Error(`batch of files: ${filesBatch.response.status} ${JSON.stringify(filesBatch.error)}`);
  const batchId = filesBatch.data.data.batch_id;
  const finished = await poll(async () => {
    const answer = await api.GET("/v1/batches/{batch_id}", { params: { path: { batch_id: batchId } } });
    if (!answer.data) throw new Error(`get batch: ${answer.response.status}`);
    return answer.data.data.status === "completed" ? answer.data : undefined;
  });

  // The JSON form on the batch operation that takes both.
  const urlsBatch = await api.POST("/v1/remove-background/batch", { body: { urls: [imageUrl], output_size: "small" } });
  if (!urlsBatch.data) throw new Error(`batch of urls: ${urlsBatch.response.status} ${JSON.stringify(urlsBatch.error)}`);

  const got = await api.GET("/v1/images/{image_id}", { params: { path: { image_id: image.id } } });
  if (!got.data) throw new Error(`get: ${got.response.status}`);
  const outputUrl = got.data.data.output_url;
  if (!outputUrl) throw new Error("no output_url");

  const { name, expires, signature } = signedLink(outputUrl);
  const downloaded = await api.GET("/v1/files/{name}", {
    params: { path: { name }, query: { expires, signature } }, parseAs: "blob",
  });
  if (!downloaded.data) throw new Error(`download: ${downloaded.response.status}`);

  // The negotiating operation with Accept: image/png: the body is the image (parseAs blob gives a Blob).
  const cutout = await api.POST("/v1/remove-background/file", {
    body: { file: photo }, bodySerializer: formData, headers: { Accept: "image/png" }, parseAs: "blob",
  });
  if (!cutout.data) throw new Error(`image answer: ${cutout.response.status} ${JSON.stringify(cutout.error)}`);

  const wrong = createClient<paths, "application/json">({ baseUrl, headers: { "X-API-Key": "rmv_wrong" } });
  const refused = await wrong.GET("/v1/account");

  report({
    upload: { status: uploaded.response.status, id: image.id, format: image.output_format, width: image.width },
    files_batch: {
      status: filesBatch.response.status, total: filesBatch.data.data.total_images,
      completed: finished.meta.completed, formats: finished.data.images.map((each) => each.output_format),
    },
    urls_batch: { status: urlsBatch.response.status, total: urlsBatch.data.data.total_images },
    get: { status: got.response.status, id: got.data.data.id },
    download: {
      status: downloaded.response.status, type: downloaded.response.headers.get("Content-Type"),
      magic: await magic(downloaded.data),
    },
    image_answer: {
      status: cutout.response.status, type: cutout.response.headers.get("Content-Type"),
      image_id: cutout.response.headers.get("X-Image-Id"), width: cutout.response.headers.get("X-Width"),
      magic: await magic(cutout.data),
    },
    unauthorized: { status: refused.response.status, code: refused.error?.error.code, data: refused.data ?? null },
  });
}

main().catch((failure: unknown) => {
  console.error(failure);
  process.exit(1);
});
