// The API documentation page: fetches /v1/openapi.json and renders it with DOM nodes. Descriptions are CommonMark,
// rendered by the vendored markdown-it (markdown-it.min.js, loaded first) with raw HTML off, so markup in the
// document is shown as text, never parsed as HTML; every other value goes in as textContent.
"use strict";

const markdown = window.markdownit({ html: false, linkify: false, typographer: false });

// A description as a block (paragraphs, lists, code spans) or, in tables and headings, inline.
function prose(text) {
  const node = el("div", { class: "md" });
  node.innerHTML = markdown.render(text || "");
  return node;
}

function proseInline(text) {
  const node = el("span", { class: "md" });
  node.innerHTML = markdown.renderInline(text || "");
  return node;
}

// A block of code or JSON with a button that copies it (the text exactly as shown).
function copyable(pre) {
  const button = el("button", { type: "button", class: "copy", "aria-label": "Copy to the clipboard" }, "Copy");
  button.addEventListener("click", () => {
    navigator.clipboard.writeText(pre.textContent).then(
      () => { button.textContent = "Copied"; },
      () => { button.textContent = "Copy failed"; },
    ).finally(() => setTimeout(() => { button.textContent = "Copy"; }, 2000));
  });
  return el("div", { class: "block" }, button, pre);
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(doc, node) {
  while (node && node.$ref) {
    node = node.$ref.replace(/^#\//, "").split("/")
      .reduce((target, key) => target[key.replace(/~1/g, "/").replace(/~0/g, "~")], doc);
  }
  return node;
}

function refName(ref) { return ref.split("/").pop(); }

function typeLabel(schema) {
  if (!schema) return "any";
  if (schema.$ref) return el("a", { href: `#schema-${refName(schema.$ref)}` }, refName(schema.$ref));
  if ("const" in schema) return el("code", {}, JSON.stringify(schema.const));
  if (schema.enum) return "one of " + schema.enum.map((value) => JSON.stringify(value)).join(", ");
  if (schema.anyOf) {
    const span = el("span");
    schema.anyOf.forEach((choice, index) => span.append(index ? " or " : "", typeLabel(choice)));
    return span;
  }
  if (schema.type === "array") {
    return el("span", {}, "array of ", typeLabel(schema.items));
  }
  return [schema.type || "any", schema.format ? ` (${schema.format})` : ""].join("");
}

// A field's limits; a pattern is shown as written (a regular expression, not a JSON string with its
// backslashes doubled).
function constraints(schema) {
  const keys = ["pattern", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "default"];
  const shown = keys.filter((key) => schema && key in schema);
  if (!shown.length) return null;
  const list = el("span", { class: "limits" });
  shown.forEach((key, index) => {
    const value = key === "pattern" ? schema[key] : JSON.stringify(schema[key]);
    list.append(index ? "; " : "", `${key}: `, el("code", { class: `limit-${key}` }, value));
  });
  return list;
}

function table(headings, rows) {
  const head = el("tr");
  for (const heading of headings) head.append(el("th", {}, heading));
  const body = el("tbody");
  for (const cells of rows) {
    const row = el("tr");
    // data-label: the column's name, shown beside each cell where narrow screens stack the cells.
    cells.forEach((cell, index) => row.append(el("td", { "data-label": headings[index] }, ...[].concat(cell))));
    body.append(row);
  }
  return el("table", {}, el("thead", {}, head), body);
}

function schemaTable(doc, schema) {
  const resolved = resolve(doc, schema);
  if (!resolved || !resolved.properties) return el("p", {}, typeLabel(schema));
  const required = new Set(resolved.required || []);
  // Required fields first, each group in the document's order.
  const fields = Object.entries(resolved.properties).sort(([a], [b]) => required.has(b) - required.has(a));
  return table(["Field", "Type", "Description"], fields.map(([name, field]) => {
    const extra = constraints(field);
    return [
      [el("code", {}, name), required.has(name) ? el("span", { class: "req" }, " required") : null],
      typeLabel(field),
      [proseInline(field.description), extra ? el("br") : null, extra],
    ];
  }));
}

function response(doc, status, spec) {
  const resolved = resolve(doc, spec);
  const section = el("div", {}, el("h4", {}, `${status} — `,
    spec.$ref ? el("a", { href: `#response-${refName(spec.$ref)}` }, refName(spec.$ref)) : proseInline(resolved.description)));
  if (spec.$ref) return section;
  for (const [media, content] of Object.entries(resolved.content || {})) {
    section.append(el("p", {}, "Body: ", el("code", {}, media), " ", typeLabel(content.schema)));
    if (content.example) section.append(copyable(el("pre", { class: "example" }, JSON.stringify(content.example, null, 2))));
  }
  const headers = Object.entries(resolved.headers || {});
  if (headers.length) {
    section.append(table(["Header", "Type", "Description"], headers.map(([name, header]) => [
      [el("code", {}, name), header.required ? el("span", { class: "req" }, " always") : null],
      typeLabel(header.schema), proseInline(header.description)])));
  }
  for (const [name, link] of Object.entries(resolved.links || {})) {
    section.append(el("p", {}, "Link ", el("code", {}, name), ": ",
      el("a", { href: `#op-${link.operationId}` }, link.operationId), " — ", proseInline(link.description)));
  }
  return section;
}

function operation(doc, path, method, op) {
  const section = el("section", { class: "op", id: `op-${op.operationId}` },
    el("h3", {}, el("span", { class: "method" }, method), " ", el("code", {}, path)),
    el("p", {}, el("strong", {}, op.summary || "")),
    prose(op.description),
    el("p", {}, op.security && op.security.length === 0 ? "Public: no API key." : "Needs the X-API-Key header."));
  const parameters = (op.parameters || []).map((parameter) => resolve(doc, parameter));
  if (parameters.length) {
    section.append(el("h4", {}, "Parameters"), table(["Parameter", "In", "Type", "Description"],
      parameters.map((parameter) => {
        const extra = constraints(parameter.schema);
        return [el("code", {}, parameter.name), parameter.in, typeLabel(parameter.schema),
          [proseInline(parameter.description), extra ? el("br") : null, extra]];
      })));
  }
  if (op.requestBody) {
    for (const [media, content] of Object.entries(op.requestBody.content)) {
      section.append(el("h4", {}, "Request body: ", el("code", {}, media)), schemaTable(doc, content.schema));
    }
  }
  for (const sample of op["x-codeSamples"] || []) {
    section.append(el("h4", {}, `Example: ${sample.label}`),
      copyable(el("pre", { class: `sample sample-${sample.label}` }, sample.source)));
  }
  section.append(el("h4", {}, "Responses"));
  for (const [status, spec] of Object.entries(op.responses)) section.append(response(doc, status, spec));
  return section;
}

function render(doc) {
  const main = document.getElementById("docs");
  main.replaceChildren();
  main.append(el("section", { id: "intro" }, prose(doc.info.description)));
  const nav = el("ul");
  const operations = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      operations.push([path, method, op]);
      nav.append(el("li", {}, el("a", { href: `#op-${op.operationId}` }, el("span", { class: "method" }, method), " ",
        el("code", {}, path)), ` — ${op.summary || ""}`));
    }
  }
  main.append(el("h2", {}, "Endpoints"), el("nav", {}, nav));
  for (const [path, method, op] of operations) main.append(operation(doc, path, method, op));
  main.append(el("h2", {}, "Error responses"));
  for (const [name, spec] of Object.entries(doc.components.responses)) {
    main.append(el("section", { id: `response-${name}` }, el("h3", {}, name), prose(spec.description),
      response(doc, "", spec)));
  }
  main.append(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    main.append(el("h3", { id: `schema-${name}` }, name), prose(schema.description), schemaTable(doc, schema));
  }
  main.setAttribute("aria-busy", "false");
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
}

fetch("/v1/openapi.json")
  .then((answer) => { if (!answer.ok) throw new Error(`HTTP ${answer.status}`); return answer.json(); })
  .then(render)
  .catch((failure) => {
    const main = document.getElementById("docs");
    main.replaceChildren(el("p", { class: "error" }, `Could not load /v1/openapi.json: ${failure.message}`));
    main.setAttribute("aria-busy", "false");
  });
