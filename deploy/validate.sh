#!/usr/bin/env bash
# Render every kustomize overlay of deploy/k8s and validate each object against the Kubernetes and CRD
# JSON schemas kept in deploy/schemas (kubeconform, strict: unknown fields are errors; no schema is
# downloaded, and a kind without a schema fails).
#
#   deploy/validate.sh                   # render + validate; the rendered YAML goes to $OUT_DIR if set
#   deploy/validate.sh --install-tools   # install kustomize and kubeconform (Go module proxy), cached
#   deploy/validate.sh --print-tools     # the tool paths it would use
#
# Tools: $KUSTOMIZE / $KUBECONFORM if set, else the cached install under $HIDDENSTATE_DEPLOY_TOOLS
# (default ~/.cache/hiddenstate/deploy-tools/<tool>-<version>/), else the one on PATH.
# tests/test_deploy_manifests.py runs this script; .ci/run runs --install-tools first.
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.1     # sigs.k8s.io/kustomize/kustomize/v5 (v5.8.2+ need Go 1.27)
KUBECONFORM_VERSION=v0.8.0   # github.com/yannh/kubeconform
KUBERNETES_VERSION=1.35.0    # deploy/schemas/kubernetes/v$KUBERNETES_VERSION-standalone-strict

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${HIDDENSTATE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/hiddenstate/deploy-tools}
KUSTOMIZE_DIR=$TOOLS/kustomize-$KUSTOMIZE_VERSION
KUBECONFORM_DIR=$TOOLS/kubeconform-$KUBECONFORM_VERSION

find_tool() {  # find_tool NAME DIR OVERRIDE
    if [ -n "$3" ]; then echo "$3"
    elif [ -x "$2/$1" ]; then echo "$2/$1"
    else command -v "$1" || true
    fi
}

go_install() {  # go_install DIR BINARY MODULE@VERSION: quiet unless it fails; nothing to do if already there
    local dir=$1 binary=$2 module=$3 log
    [ -x "$dir/$binary" ] && return 0
    echo "installing $module into $dir" >&2
    # GOTOOLCHAIN=local: never fetch another Go; cd + GOFLAGS: no go.mod around matters
    if ! log=$(cd "$TOOLS" && GOTOOLCHAIN=local GOFLAGS=-mod=mod GOBIN="$dir" go install "$module" 2>&1); then
        echo "$log" >&2
        echo "validate.sh: go install $module failed" >&2
        exit 1
    fi
}

install_tools() {
    command -v go >/dev/null || { echo "validate.sh: go is not installed" >&2; exit 1; }
    mkdir -p "$TOOLS"
    go_install "$KUSTOMIZE_DIR" kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
    go_install "$KUBECONFORM_DIR" kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
}

kustomize=$(find_tool kustomize "$KUSTOMIZE_DIR" "${KUSTOMIZE:-}")
kubeconform=$(find_tool kubeconform "$KUBECONFORM_DIR" "${KUBECONFORM:-}")

case "${1:-}" in
    --install-tools) install_tools; exit 0 ;;
    --print-tools) echo "kustomize=$kustomize"; echo "kubeconform=$kubeconform"; exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--install-tools | --print-tools]" >&2; exit 2 ;;
esac

missing=()
[ -n "$kustomize" ] || missing+=(kustomize)
[ -n "$kubeconform" ] || missing+=(kubeconform)
if [ ${#missing[@]} -gt 0 ]; then
    echo "validate.sh: ${missing[*]} not found: run deploy/validate.sh --install-tools (needs go)" >&2
    exit 3
fi

out=${OUT_DIR:-$(mktemp -d)}
[ -n "${OUT_DIR:-}" ] || trap 'rm -rf "$out"' EXIT
mkdir -p "$out"

status=0
for overlay in "$ROOT"/deploy/k8s/overlays/*/; do
    name=$(basename "$overlay")
    rendered="$out/$name.yaml"
    if ! "$kustomize" build "$overlay" > "$rendered"; then
        echo "FAIL $name: kustomize build failed" >&2
        status=1
        continue
    fi
    # only the schemas in the repository: no default (remote) location
    if "$kubeconform" -strict -summary -kubernetes-version "$KUBERNETES_VERSION" \
        -schema-location "$ROOT/deploy/schemas/kubernetes/{{.NormalizedKubernetesVersion}}-standalone{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json" \
        -schema-location "$ROOT/deploy/schemas/crds/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json" \
        "$rendered"; then
        echo "ok   $name: $(grep -c '^kind:' "$rendered") objects rendered and valid"
    else
        echo "FAIL $name: kubeconform found invalid objects" >&2
        status=1
    fi
done
exit $status
