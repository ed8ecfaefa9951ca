// The "Try it out" page: calls the public API with fetch() and the caller's own X-API-Key.
"use strict";

(() => {
  const KEY_STORAGE = "removai.apiKey";
  const REQUEST_TIMEOUT_MS = 180000;
  const $ = (id) => document.getElementById(id);

  const form = $("try-form");
  const apiKey = $("api-key");
  const rememberKey = $("remember-key");
  const sourceFile = $("source-file");
  const sourceUrl = $("source-url");
  const filePanel = $("file-panel");
  const urlPanel = $("url-panel");
  const dropZone = $("drop-zone");
  const fileInput = $("file-input");
  const fileName = $("file-name");
  const imageUrl = $("image-url");
  const outputFormat = $("output-format");
  const outputSize = $("output-size");
  const bgColor = $("bg-color");
  const bgNone = $("bg-none");
  const webhookUrl = $("webhook-url");
  const outputType = $("output-type");
  const model = $("model");
  const crop = $("crop");
  const cropMargin = $("crop-margin");
  const decontaminate = $("decontaminate");
  const bgImageUrl = $("bg-image-url");
  const bgImageFile = $("bg-image-file");
  const submit = $("submit");
  const busy = $("busy");
  const results = $("results");
  const errorBox = $("error");
  const originalFrame = $("original-frame");
  const cutoutFrame = $("cutout-frame");
  const download = $("download");
  const facts = $("facts");

  let chosenFile = null;
  let originalObjectUrl = null;

  // --- API key: in memory, or in this tab's sessionStorage when asked; never in the URL. ---
  try {
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) {
      apiKey.value = saved;
      rememberKey.checked = true;
    }
  } catch (_) { /* storage disabled: the key just is not remembered */ }

  function storeKey() {
    try {
      if (rememberKey.checked && apiKey.value) sessionStorage.setItem(KEY_STORAGE, apiKey.value);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) { /* storage disabled */ }
  }
  rememberKey.addEventListener("change", storeKey);
  apiKey.addEventListener("change", storeKey);

  // --- Source: a file (input or drop) or a URL. ---
  function showSource() {
    const useFile = sourceFile.checked;
    filePanel.hidden = !useFile;
    urlPanel.hidden = useFile;
  }
  sourceFile.addEventListener("change", showSource);
  sourceUrl.addEventListener("change", showSource);

  function chooseFile(file) {
    chosenFile = file || null;
    fileName.textContent = chosenFile ? `${chosenFile.name} (${formatBytes(chosenFile.size)})` : "";
    if (chosenFile) {
      sourceFile.checked = true;
      showSource();
    }
  }

  fileInput.addEventListener("change", () => chooseFile(fileInput.files[0]));
  dropZone.addEventListener("click", () => fileInput.click());
  dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragover");
    });
  }
  for (const type of ["dragleave", "dragend", "drop"]) {
    dropZone.addEventListener(type, () => dropZone.classList.remove("dragover"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) chooseFile(file);
  });
  // A file dropped anywhere else must not make the browser navigate away (and lose the key).
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  bgNone.addEventListener("change", () => { bgColor.disabled = bgNone.checked; });
  crop.addEventListener("change", () => { cropMargin.disabled = !crop.checked; });

  // --- Models: what GET /v1/models lists (public, no key), the default marked. ---
  async function loadModels() {
    try {
      const response = await fetch("/v1/models", { credentials: "omit", cache: "no-store" });
      const body = await response.json();
      for (const entry of (body.data && body.data.models) || []) {
        const option = document.createElement("option");
        option.value = entry.name;
        option.textContent = entry.default ? `${entry.name} (default)` : entry.name;
        option.title = entry.description || "";
        model.append(option);
      }
      model.dataset.state = "loaded";
    } catch (_) {
      model.dataset.state = "error"; // the default model is still used
    }
  }

  // --- Showing results. ---
  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function placeholder(frame, text) {
    const p = document.createElement("p");
    p.className = "placeholder";
    p.textContent = text;
    frame.replaceChildren(p);
  }

  function showError(code, message, status) {
    $("error-code").textContent = code;
    $("error-message").textContent = status ? `${message} (HTTP ${status})` : message;
    errorBox.hidden = false;
  }

  function showHeaders(response) {
    const header = (name) => (response ? response.headers.get(name) : null);
    $("rl-limit").textContent = header("X-RateLimit-Limit") ?? "—";
    $("rl-remaining").textContent = header("X-RateLimit-Remaining") ?? "—";
    const reset = header("X-RateLimit-Reset");
    const resetSeconds = Number(reset);
    const resetCell = $("rl-reset");
    resetCell.textContent = reset ?? "—";
    if (reset && Number.isFinite(resetSeconds)) {
      const local = document.createElement("span");
      local.className = "local-time";
      local.textContent = `(${new Date(resetSeconds * 1000).toLocaleString()} local time)`;
      resetCell.append(local);
    }
    $("request-id").textContent = header("X-Request-Id") ?? "—";
  }

  function showOriginal(source) {
    if (originalObjectUrl) {
      URL.revokeObjectURL(originalObjectUrl);
      originalObjectUrl = null;
    }
    if (source.file) {
      originalObjectUrl = URL.createObjectURL(source.file);
      const img = document.createElement("img");
      img.alt = `Original: ${source.file.name}`;
      img.src = originalObjectUrl;
      originalFrame.replaceChildren(img);
      return;
    }
    // A URL source is never put in an <img>: this page's Content-Security-Policy loads images only from the
    // gateway itself, so a remote one would be a broken-image icon. Say where the gateway fetches it from,
    // and once the result is in, what it fetched (showFetched).
    const p = document.createElement("p");
    p.className = "placeholder";
    p.append("The gateway fetches the image from ", remoteLink(source.url), "…");
    originalFrame.replaceChildren(p);
  }

  function remoteLink(url) {
    const link = document.createElement("a");
    link.href = url;
    link.textContent = url;
    link.rel = "noopener noreferrer";
    link.target = "_blank";
    return link;
  }

  // The original of a URL source, from the result: where it came from and its size (the cut-out keeps the
  // original's size unless output_size made it smaller).
  function showFetched(data) {
    const p = document.createElement("p");
    p.className = "fetched";
    p.append("Fetched by the gateway from ", remoteLink(data.original_url), ".");
    const note = document.createElement("span");
    note.className = "help";
    note.textContent = data.output_size === "original"
      ? ` It is ${data.width} × ${data.height} px; the cut-out beside it is the same picture without its background.`
      : " The cut-out beside it is the same picture without its background.";
    p.append(note);
    originalFrame.replaceChildren(p);
  }

  function seconds(ms) {
    return ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
  }

  // The result and the rate-limit window in plain words.
  function showFacts(data, response, elapsedMs) {
    const resultFacts = $("result-facts");
    const rateFacts = $("rate-facts");
    resultFacts.textContent = "";
    rateFacts.textContent = "";
    if (data && data.status === "completed") {
      resultFacts.textContent = `${data.width} × ${data.height} px ${String(data.output_format).toUpperCase()}, `
        + `${formatBytes(data.size_bytes)}, done in ${seconds(elapsedMs)}.`;
    } else if (elapsedMs !== null) {
      resultFacts.textContent = `Answered in ${seconds(elapsedMs)}.`;
    }
    const limit = response && response.headers.get("X-RateLimit-Limit");
    const remaining = response && response.headers.get("X-RateLimit-Remaining");
    const reset = Number(response && response.headers.get("X-RateLimit-Reset"));
    if (limit && remaining !== null && Number.isFinite(reset) && reset > 0) {
      const inSeconds = Math.max(0, Math.round(reset - Date.now() / 1000));
      rateFacts.textContent = `${remaining} of ${limit} requests left in this minute's window; it resets at `
        + `${new Date(reset * 1000).toLocaleTimeString()} (in ${inSeconds} s).`;
    }
    facts.hidden = !resultFacts.textContent && !rateFacts.textContent;
  }

  // The foreground's bounding box, drawn over the result in percent of its size (the image is scaled to fit).
  function showForeground(data) {
    const box = data.foreground;
    if (!box) {
      $("foreground").textContent = "Foreground: none found";
      return;
    }
    $("foreground").textContent =
      `Foreground: ${box.width} × ${box.height} px at (${box.left}, ${box.top})`;
    const outline = document.createElement("div");
    outline.id = "foreground-box";
    outline.className = "foreground-box";
    outline.style.left = `${(100 * box.left) / data.width}%`;
    outline.style.top = `${(100 * box.top) / data.height}%`;
    outline.style.width = `${(100 * box.width) / data.width}%`;
    outline.style.height = `${(100 * box.height) / data.height}%`;
    const holder = document.createElement("div");
    holder.className = "result-holder";
    const img = $("cutout");
    img.replaceWith(holder);
    holder.append(img, outline);
  }

  function showCutout(data) {
    const img = document.createElement("img");
    img.id = "cutout";
    const mask = data.output_type === "mask";
    $("cutout-caption").textContent = mask ? "Mask" : "Cut-out";
    img.alt = mask ? "Mask: white where the subject is" : "Cut-out with the background removed";
    img.addEventListener("load", () => { img.dataset.state = "loaded"; });
    img.addEventListener("error", () => {
      img.dataset.state = "error";
      placeholder(cutoutFrame, "The cut-out could not be loaded from output_url.");
    });
    img.src = data.output_url;
    cutoutFrame.replaceChildren(img);
    showForeground(data);
    download.href = data.output_url;
    download.download = `${data.id || "cutout"}.${data.output_format || "png"}`;
    download.textContent = `Download ${download.download}`;
    download.hidden = false;
  }

  function resetResults() {
    errorBox.hidden = true;
    facts.hidden = true;
    apiKey.removeAttribute("aria-invalid");
    download.hidden = true;
    download.removeAttribute("href");
    placeholder(cutoutFrame, "Processing…");
    $("foreground").textContent = "";
    $("response-json").textContent = "—";
    $("http-status").textContent = "";
    showHeaders(null);
  }

  function setBusy(on) {
    submit.disabled = on;
    form.setAttribute("aria-busy", String(on));
    results.setAttribute("aria-busy", String(on));
    busy.textContent = on ? "Processing… this can take a few seconds." : "";
  }

  // --- Submitting. ---
  function options() {
    const fields = { output_format: outputFormat.value, output_size: outputSize.value };
    if (!bgNone.checked) fields.bg_color = bgColor.value.toUpperCase();
    if (webhookUrl.value.trim()) fields.webhook_url = webhookUrl.value.trim();
    if (outputType.value !== "cutout") fields.output_type = outputType.value;
    if (model.value) fields.model = model.value;
    if (crop.checked) {
      fields.crop = "true";
      if (cropMargin.value.trim()) fields.crop_margin = cropMargin.value.trim();
    }
    if (bgImageUrl.value.trim()) fields.bg_image_url = bgImageUrl.value.trim();
    if (!decontaminate.checked) fields.decontaminate = "false";  // true is the default
    return fields;
  }

  function buildRequest() {
    const headers = { "X-API-Key": apiKey.value.trim(), "Accept": "application/json" };
    if (sourceFile.checked) {
      if (!chosenFile) return { problem: "Choose or drop an image file first." };
      const body = new FormData();
      for (const [name, value] of Object.entries(options())) body.append(name, value);
      body.append("file", chosenFile, chosenFile.name);
      if (bgImageFile.files[0]) body.append("bg_image", bgImageFile.files[0], bgImageFile.files[0].name);
      return { path: "/v1/remove-background/file", headers, body, source: { file: chosenFile } };
    }
    const url = imageUrl.value.trim();
    if (!url) return { problem: "Enter the URL of an image first." };
    if (bgImageFile.files[0]) return { problem: "A background image file goes with uploads; give its URL instead." };
    headers["Content-Type"] = "application/json";
    const fields = options();
    if (fields.crop) fields.crop = true;
    if (fields.decontaminate) fields.decontaminate = false;
    const body = JSON.stringify({ url, ...fields });
    return { path: "/v1/remove-background/url", headers, body, source: { url } };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    storeKey();
    resetResults();
    if (!apiKey.value.trim()) {
      // Checked here, not sent: the API would only answer 401.
      placeholder(cutoutFrame, "No result yet");
      showError("No API key.", "Enter your API key in the X-API-Key field first; “Where do I get an API key?” "
        + "below it says how to get one.");
      apiKey.setAttribute("aria-invalid", "true");
      apiKey.focus();
      return;
    }
    const request = buildRequest();
    if (request.problem) {
      placeholder(cutoutFrame, "No result yet");
      showError("No image.", request.problem);
      return;
    }
    showOriginal(request.source);
    setBusy(true);
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    const started = performance.now();
    try {
      const response = await fetch(request.path, {
        method: "POST",
        headers: request.headers,
        body: request.body,
        signal: abort.signal,
        credentials: "omit",
        cache: "no-store",
      });
      showHeaders(response);
      $("http-status").textContent = `HTTP ${response.status}`;
      const text = await response.text();
      let body = null;
      try { body = JSON.parse(text); } catch (_) { /* not JSON: shown as text below */ }
      $("response-json").textContent = body === null ? text : JSON.stringify(body, null, 2);
      showFacts(body && body.data, response, performance.now() - started);
      if (body && body.success && body.data && body.data.output_url) {
        showCutout(body.data);
        if (request.source.url && body.data.original_url) showFetched(body.data);
      } else {
        placeholder(cutoutFrame, "No result");
        const error = (body && body.error) || {};
        showError(error.code || "unexpected_response", error.message || "The server's answer was not understood.",
          error.status || response.status);
      }
    } catch (failure) {
      placeholder(cutoutFrame, "No result");
      const timedOut = failure && failure.name === "AbortError";
      showError(timedOut ? "timeout" : "network_error",
        timedOut ? "No answer in time; try again." : `The request failed: ${failure}`);
    } finally {
      clearTimeout(timer);
      setBusy(false);
    }
  });

  showSource();
  loadModels();
})();
