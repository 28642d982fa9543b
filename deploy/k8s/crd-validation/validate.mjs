// Validate custom resources against their CRDs' OpenAPI v3 schemas.
//   kubectl kustomize deploy/k8s/overlays/prod | <yaml → JSON array> | node validate.mjs
// stdin: a JSON array of resources; stdout: a JSON array of {kind, name, errors} (errors [] when valid).
// A resource of a group or kind without a model is reported as an error, never passed over.
import { readFileSync } from "node:fs";

const PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
};

async function check(resource) {
  const [group, version] = resource.apiVersion.split("/");
  const name = resource.metadata?.name ?? "";
  const pkg = PACKAGES[group];
  if (!pkg) return { kind: resource.kind, name, errors: [`no CRD schema for API group ${group}`] };
  let model;
  try {
    model = (await import(`${pkg}/${group}/${version}/${resource.kind}`))[resource.kind];
  } catch (error) {
    return { kind: resource.kind, name, errors: [`no CRD schema for ${resource.apiVersion} ${resource.kind}: ${error.message}`] };
  }
  try {
    new model(resource).validate();
    return { kind: resource.kind, name, errors: [] };
  } catch (error) {
    return { kind: resource.kind, name, errors: [error.message] };
  }
}

const resources = JSON.parse(readFileSync(0, "utf8"));
console.log(JSON.stringify(await Promise.all(resources.map(check))));
