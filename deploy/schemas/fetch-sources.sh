#!/usr/bin/env bash
# Re-obtain the CRDs in deploy/schemas/sources/ from the package registries, at the pinned versions,
# then regenerate the JSON schemas (deploy/schemas/generate.py). Not run by CI: the results are committed.
#
#   prometheus-operator (ServiceMonitor, PrometheusRule): the Go module's example/prometheus-operator-crd/
#   KEDA (ScaledObject, TriggerAuthentication): the Go module github.com/kedacore/keda/v2, config/crd/bases/
#   Strimzi (KafkaTopic): generated from the Maven artifact io.strimzi:api with io.strimzi:crd-generator,
#     exactly as Strimzi's own build does (its api/pom.xml); crd-generator needs Java 21 or later.
#
# Needs go, mvn, a Java >= 21 (JAVA21 below), python3 with PyYAML, and for the Kubernetes schemas
# `pip install kubernetes-validate==1.37.0`.
set -euo pipefail
cd "$(dirname "$0")"

PROMETHEUS_OPERATOR_VERSION=v0.85.0
KEDA_VERSION=v2.21.0
STRIMZI_VERSION=1.2.0
JAVA21=${JAVA21:-$(ls -d /usr/lib/jvm/temurin-2[1-9]*-jdk*/bin/java 2>/dev/null | head -n 1 || true)}
JAVA21=${JAVA21:-java}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

module_dir() {  # the Go module's folder in the module cache
    (cd "$work" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "$1" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
}

po=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
for crd in servicemonitors prometheusrules; do
    install -m 644 "$po/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" sources/
done

keda=$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")
for crd in scaledobjects triggerauthentications; do
    install -m 644 "$keda/config/crd/bases/keda.sh_$crd.yaml" sources/
done

cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>strimzi-crds</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>io.strimzi</groupId><artifactId>api</artifactId><version>$STRIMZI_VERSION</version></dependency>
    <dependency><groupId>io.strimzi</groupId><artifactId>crd-generator</artifactId><version>$STRIMZI_VERSION</version></dependency>
  </dependencies>
</project>
POM
(cd "$work" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib)
"$JAVA21" -cp "$work/lib/*" io.strimzi.crdgenerator.CrdGenerator \
    --label app:strimzi --label strimzi.io/crd-install:true --target-kube 1.16+ \
    --crd-api-version v1 --api-versions v1 --storage-version v1 \
    --yaml "io.strimzi.api.kafka.model.topic.KafkaTopic=$PWD/sources/kafka.strimzi.io_kafkatopics.yaml"

if python3 -c 'import kubernetes_validate' 2>/dev/null; then
    python3 generate.py
else
    echo "kubernetes-validate is not installed: regenerating the CRD schemas only" >&2
    python3 generate.py --crds-only
fi
