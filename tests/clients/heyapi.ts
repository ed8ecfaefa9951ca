// A program written against the SDK @hey-api/openapi-ts generates from the served document (generated/heyapi):
// upload, batch of files, batch of URLs, get, download, the image answer and a wrong key. No casts.
import { createClient, createConfig } from "./generated/heyapi/client";
import { client } from "./generated/heyapi/client.gen";
import {
  downloadOutput,
  getAccount,
  getBatch,
  getImage,
  removeBackgroundBatchFromFiles,
  removeBackgroundBatchFromUrls,
  removeBackgroundFromFile,
  removeBackgroundFromFileAsImage,
} from "./generated/heyapi/sdk.gen";
import { inputs, magic, poll, report, signedLink } from "./shared";

async function main(): Promise<void> {
  const { baseUrl, apiKey, photo, imageUrl } = inputs();
  client.setConfig({ baseUrl, auth: apiKey });

  const uploaded = await removeBackgroundFromFile({ body: { file: photo, output_format: "webp" } });
  if (!uploaded.data) throw new Error(`upload: ${uploaded.response.status} ${JSON.stringify(uploaded.error)}`);
  const image = uploaded.data.data;

  const filesBatch = await removeBackgroundBatchFromFiles({ body: { files: [photo, photo], output_format: "jpg" } });
  if (!filesBatch.data) throw new Error(`batch of files: ${filesBatch.response.status} ${JSON.stringify(filesBatch.error)}`);
  const batchId = filesBatch.data.data.batch_id;
  const finished = await poll(async () => {
    const answer = await getBatch({ path: { batch_id: batchId } });
    if (!answer.data) throw new Error(`get batch: ${answer.response.status}`);
    return answer.data.data.status === "completed" ? answer.data : undefined;
  });

  const urlsBatch = await removeBackgroundBatchFromUrls({ body: { urls: [imageUrl], output_size: "small" } });
  if (!urlsBatch.data) throw new Error(`batch of urls: ${urlsBatch.response.status} ${JSON.stringify(urlsBatch.error)}`);

  const got = await getImage({ path: { image_id: image.id } });
  if (!got.data) throw new Error(`get: ${got.response.status}`);
  const outputUrl = got.data.data.output_url;
  if (!outputUrl) throw new Error("no output_url");

  const downloaded = await downloadOutput({ path: { name: signedLink(outputUrl).name }, query: signedLink(outputUrl) });
  if (!downloaded.data) throw new Error(`download: ${downloaded.response.status}`);

  const cutout = await removeBackgroundFromFileAsImage({ body: { file: photo }, headers: { Accept: "image/png" } });
  if (!cutout.data) throw new Error(`image answer: ${cutout.response.status} ${JSON.stringify(cutout.error)}`);

  const wrong = createClient(createConfig({ baseUrl, auth: "rmv_wrong" }));
  const refused = await getAccount({ client: wrong });

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
