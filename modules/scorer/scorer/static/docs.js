// A reference of the HTTP API, rendered from /openapi.json in the browser: works offline.
"use strict";

const element = (tag, text, attributes = {}) => {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  Object.assign(node, attributes);
  return node;
};

const schemaName = (schema) =>
  schema && schema.$ref ? schema.$ref.split("/").pop() : schema ? schema.type || "object" : "";

function operation(path, method, op) {
  const section = element("section", undefined, { className: "panel" });
  section.append(element("h2", `${method.toUpperCase()} ${path}`), element("p", op.summary || ""));
  const params = op.parameters || [];
  if (params.length) {
    const list = element("ul");
    for (const p of params) {
      list.append(element("li", `${p.name} (${p.in}, ${schemaName(p.schema)})` +
        (p.description ? `: ${p.description}` : "")));
    }
    section.append(element("h3", "Parameters"), list);
  }
  if (op.requestBody) {
    const types = Object.entries(op.requestBody.content)
      .map(([type, body]) => `${type} (${schemaName(body.schema)})`);
    section.append(element("h3", "Body"), element("p", types.join(", ")));
  }
  const answers = element("ul");
  for (const [status, answer] of Object.entries(op.responses)) {
    const content = answer.content ? Object.values(answer.content)[0] : null;
    answers.append(element("li", `${status}: ${answer.description}` +
      (content ? ` → ${schemaName(content.schema)}` : "")));
  }
  section.append(element("h3", "Answers"), answers);
  return section;
}

function schemas(components) {
  const section = element("section", undefined, { className: "panel" });
  section.append(element("h2", "Schemas"));
  for (const [name, schema] of Object.entries(components.schemas)) {
    section.append(element("h3", name));
    const fields = element("ul");
    for (const [field, spec] of Object.entries(schema.properties || {})) {
      const required = (schema.required || []).includes(field) ? ", required" : "";
      const values = spec.enum ? `: ${spec.enum.join(" | ")}` : "";
      fields.append(element("li", `${field} (${schemaName(spec) || spec.type}${required})${values}`));
    }
    section.append(fields);
  }
  return section;
}

async function main() {
  const api = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = `${api.info.title} ${api.info.version}`;
  document.getElementById("description").textContent = api.info.description;
  const reference = document.getElementById("reference");
  for (const [path, methods] of Object.entries(api.paths)) {
    for (const [method, op] of Object.entries(methods)) reference.append(operation(path, method, op));
  }
  reference.append(schemas(api.components));
}

main();
