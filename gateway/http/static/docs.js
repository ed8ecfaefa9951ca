// The API documentation page: fetches /v1/openapi.json and renders it with DOM nodes (textContent only, so
// nothing from the document is ever parsed as HTML).
"use strict";

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

function constraints(schema) {
  const keys = ["pattern", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "default"];
  return keys.filter((key) => schema && key in schema)
    .map((key) => `${key}: ${JSON.stringify(schema[key])}`).join("; ");
}

function schemaTable(doc, schema) {
  const resolved = resolve(doc, schema);
  if (!resolved || !resolved.properties) return el("p", {}, typeLabel(schema));
  const table = el("table", {}, el("tr", {}, el("th", {}, "Field"), el("th", {}, "Type"), el("th", {}, "Description")));
  const required = new Set(resolved.required || []);
  // Required fields first, each group in the document's order.
  const fields = Object.entries(resolved.properties).sort(([a], [b]) => required.has(b) - required.has(a));
  for (const [name, field] of fields) {
    const extra = constraints(field);
    table.append(el("tr", {},
      el("td", {}, el("code", {}, name), required.has(name) ? el("span", { class: "req" }, " required") : null),
      el("td", {}, typeLabel(field)),
      el("td", {}, field.description || "", extra ? el("br") : null, extra)));
  }
  return table;
}

function response(doc, status, spec) {
  const resolved = resolve(doc, spec);
  const section = el("div", {}, el("h4", {}, `${status} — `,
    spec.$ref ? el("a", { href: `#response-${refName(spec.$ref)}` }, refName(spec.$ref)) : resolved.description));
  if (spec.$ref) return section;
  for (const [media, content] of Object.entries(resolved.content || {})) {
    section.append(el("p", {}, "Body: ", el("code", {}, media), " ", typeLabel(content.schema)));
    if (content.example) section.append(el("pre", {}, JSON.stringify(content.example, null, 2)));
  }
  for (const [name, link] of Object.entries(resolved.links || {})) {
    section.append(el("p", {}, "Link ", el("code", {}, name), ": ",
      el("a", { href: `#op-${link.operationId}` }, link.operationId), ` — ${link.description || ""}`));
  }
  return section;
}

function operation(doc, path, method, op) {
  const section = el("section", { class: "op", id: `op-${op.operationId}` },
    el("h3", {}, el("span", { class: "method" }, method), " ", el("code", {}, path)),
    el("p", {}, el("strong", {}, op.summary || "")),
    el("p", {}, op.description || ""),
    el("p", {}, op.security && op.security.length === 0 ? "Public: no API key." : "Needs the X-API-Key header."));
  const parameters = (op.parameters || []).map((parameter) => resolve(doc, parameter));
  if (parameters.length) {
    const table = el("table", {}, el("tr", {}, el("th", {}, "Parameter"), el("th", {}, "In"), el("th", {}, "Type"),
      el("th", {}, "Description")));
    for (const parameter of parameters) {
      table.append(el("tr", {}, el("td", {}, el("code", {}, parameter.name)), el("td", {}, parameter.in),
        el("td", {}, typeLabel(parameter.schema)), el("td", {}, parameter.description || "")));
    }
    section.append(el("h4", {}, "Parameters"), table);
  }
  if (op.requestBody) {
    for (const [media, content] of Object.entries(op.requestBody.content)) {
      section.append(el("h4", {}, "Request body: ", el("code", {}, media)), schemaTable(doc, content.schema));
    }
  }
  for (const sample of op["x-codeSamples"] || []) {
    section.append(el("h4", {}, `Example: ${sample.label}`), el("pre", { class: `sample-${sample.label}` }, sample.source));
  }
  section.append(el("h4", {}, "Responses"));
  for (const [status, spec] of Object.entries(op.responses)) section.append(response(doc, status, spec));
  return section;
}

function render(doc) {
  const main = document.getElementById("docs");
  main.replaceChildren();
  for (const paragraph of (doc.info.description || "").split("\n\n")) main.append(el("p", {}, paragraph));
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
    main.append(el("section", { id: `response-${name}` }, el("h3", {}, name), el("p", {}, spec.description),
      response(doc, "", spec)));
  }
  main.append(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    main.append(el("h3", { id: `schema-${name}` }, name), el("p", {}, schema.description || ""), schemaTable(doc, schema));
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
