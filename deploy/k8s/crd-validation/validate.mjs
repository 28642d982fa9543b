// Validate custom resources against their CRDs' OpenAPI v3 schemas, strictly.
//   node validate.mjs < resources.json      # a JSON array of resources
// stdout: a JSON array of {kind, name, errors}, one per resource, errors [] when valid.
//
// Two checks, because a CRD schema alone accepts fields it does not know (the API server prunes them, so a
// misspelt `pollingIntervall` would be dropped without a word):
// 1. values: each package's `validate()` (ajv, compiled from the CRD's openAPIV3Schema): types, enums,
//    patterns, required fields;
// 2. unknown fields: every resource becomes an object literal typed with the package's interface and
//    TypeScript's compiler rejects properties the schema does not declare (excess property checks).
// A resource of a group or kind without a model is an error, never passed over.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
};

function modulePath(resource) {
  const [group, version] = resource.apiVersion.split("/");
  const pkg = PACKAGES[group];
  return pkg ? `${pkg}/${group}/${version}/${resource.kind}` : null;
}

async function checkValues(resource) {
  const path = modulePath(resource);
  if (!path) return [`no CRD schema for API group ${resource.apiVersion.split("/")[0]}`];
  let model;
  try {
    model = (await import(path))[resource.kind];
  } catch (error) {
    return [`no CRD schema for ${resource.apiVersion} ${resource.kind}: ${error.message}`];
  }
  try {
    new model(resource).validate();
    return [];
  } catch (error) {
    return [error.message];
  }
}

// One line per resource, so that the compiler's line numbers say which resource an error is about.
function checkFields(resources, known) {
  const lines = [];
  const imports = new Map();
  resources.forEach((resource, index) => {
    if (!known[index]) {
      lines.push("");
      return;
    }
    const path = modulePath(resource);
    const alias = `T${imports.size}`;
    if (!imports.has(path)) imports.set(path, alias);
    lines.push(`export const r${index}: ${imports.get(path)} = ${JSON.stringify(resource)};`);
  });
  const header = [...imports].map(([path, alias]) => `import type { I${path.split("/").pop()} as ${alias} } from "${path}";`);
  const dir = mkdtempSync(join(HERE, ".check-"));
  const file = join(dir, "resources.ts");
  writeFileSync(file, [...header, ...lines].join("\n") + "\n");
  const errors = resources.map(() => []);
  try {
    execFileSync(
      join(HERE, "node_modules", ".bin", "tsc"),
      ["--noEmit", "--strict", "--skipLibCheck", "--pretty", "false", "--target", "es2022",
       "--module", "nodenext", "--moduleResolution", "nodenext", file],
      { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
    );
  } catch (failure) {
    for (const line of String(failure.stdout).split("\n")) {
      const match = line.match(/resources\.ts\((\d+),\d+\): error (TS\d+: .*)$/);
      if (!match) continue;
      const index = Number(match[1]) - 1 - header.length;
      if (index >= 0 && index < resources.length) errors[index].push(match[2]);
      else throw new Error(`tsc: ${line}`);
    }
    if (errors.every((e) => e.length === 0)) throw new Error(`tsc failed: ${failure.stdout}${failure.stderr}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return errors;
}

const resources = JSON.parse(readFileSync(0, "utf8"));
const values = await Promise.all(resources.map(checkValues));
const known = values.map((errors) => !errors.some((e) => e.startsWith("no CRD schema")));
const fields = checkFields(resources, known);
console.log(JSON.stringify(resources.map((resource, index) => ({
  kind: resource.kind,
  name: resource.metadata?.name ?? "",
  errors: [...values[index], ...fields[index]],
}))));
