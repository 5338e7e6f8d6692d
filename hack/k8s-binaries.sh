#!/usr/bin/env bash
# Finds or builds the upstream kube-apiserver, etcd and kubectl the tests and the local
# stack run against (no kubelet, no controller-manager: what controller-runtime's envtest
# runs). Prints the directory that holds all three.
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS, when it holds kube-apiserver and etcd (envtest's convention);
#   2. kube-apiserver and etcd on PATH (a package manager's install);
#   3. $HOME/.cache/featureenv-operator/k8s/<version>/, built once from the pinned Go
#      modules in hack/k8s/{apiserver,etcd}/go.mod and reused afterwards.
# kubectl comes from the same place when it is there, otherwise from the build, so the
# client never drifts more than one minor from the server.
#
# The build goes into a temporary directory that is renamed into place only when every
# binary is there, so an interrupted build is never mistaken for a finished one.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Pinned versions: the go.mod files are the source of truth; these are what the binaries
# are stamped with and where they are cached.
KUBE_VERSION="v1.35.4"
ETCD_VERSION="v3.6.5"
CACHE="${FEATUREENV_K8S_CACHE:-$HOME/.cache/featureenv-operator/k8s}/$KUBE_VERSION-etcd-$ETCD_VERSION"

say() { echo "k8s-binaries: $*" >&2; }
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

has_all() { [[ -x "$1/kube-apiserver" && -x "$1/etcd" && -x "$1/kubectl" ]]; }

# Links kube-apiserver and etcd from $1 (or PATH when empty) and a kubectl into one
# directory, so callers need one path.
link_dir() {
    local from="$1" dir apiserver etcd kubectl
    if [[ -n "$from" ]]; then
        apiserver="$from/kube-apiserver" etcd="$from/etcd" kubectl="$from/kubectl"
        [[ -x "$kubectl" ]] || kubectl="$(command -v kubectl || true)"
    else
        apiserver="$(command -v kube-apiserver)" etcd="$(command -v etcd)" kubectl="$(command -v kubectl || true)"
    fi
    [[ -n "$kubectl" ]] || return 1
    dir="${TMPDIR:-/tmp}/featureenv-k8s-$(id -u)-$(echo "$apiserver" | cksum | cut -d' ' -f1)"
    mkdir -p "$dir"
    ln -sf "$apiserver" "$dir/kube-apiserver"
    ln -sf "$etcd" "$dir/etcd"
    ln -sf "$kubectl" "$dir/kubectl"
    echo "$dir"
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    if [[ -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]] && link_dir "$KUBEBUILDER_ASSETS"; then
        exit 0
    fi
    say "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd (or no kubectl is on PATH)"
    exit 1
fi
if has_all "$CACHE"; then
    echo "$CACHE"
    exit 0
fi
if command -v kube-apiserver >/dev/null && command -v etcd >/dev/null && link_dir ""; then
    exit 0
fi

if ! command -v go >/dev/null; then
    say "no kube-apiserver/etcd found and no Go to build them: install Go (https://go.dev/dl), or set KUBEBUILDER_ASSETS to a directory with kube-apiserver, etcd and kubectl (setup-envtest use 1.35.x -p path)"
    exit 1
fi

locked_stage "$CACHE" .build.lock "the binaries"

major="${KUBE_VERSION#v}"; major="${major%%.*}"
minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
ldflags+=" -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"

build() { # name module-dir package
    local name="$1" dir="$2" pkg="$3" start=$SECONDS
    say "building $name from $pkg (first time only; several minutes on 2 cores)..."
    # go build -v names each package as it compiles; progress() counts them.
    if ! (cd "$ROOT/hack/k8s/$dir" && go build -v -trimpath -ldflags "$ldflags" -o "$STAGE/$name" "$pkg") 2>"$STAGE/$name.log"; then
        say "building $name failed; the last lines of the Go output:"
        tail -20 "$STAGE/$name.log" >&2
        say "a failed module download means the Go module proxy could not be reached; set KUBEBUILDER_ASSETS to prebuilt binaries instead."
        exit 1
    fi
    say "built $name in $((SECONDS - start)) s ($(grep -c . "$STAGE/$name.log" || true) packages compiled)"
}

progress() { # prints a line every 30 s while a build runs, so the wait is visible
    while sleep 30; do
        local n=0 f
        for f in "$STAGE"/*.log; do [[ -f "$f" ]] && n=$((n + $(grep -c . "$f" || true))); done
        say "still building... $n packages so far"
    done
}
progress &
progress_pid=$!
trap 'kill "$progress_pid" 2>/dev/null || true; rm -rf "$STAGE"' EXIT

build etcd etcd go.etcd.io/etcd/server/v3
build kube-apiserver apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kubectl apiserver k8s.io/kubernetes/cmd/kubectl
rm -f "$STAGE"/*.log

kill "$progress_pid" 2>/dev/null || true
chmod 755 "$STAGE"
rm -rf "$CACHE"
mv "$STAGE" "$CACHE"
trap - EXIT
say "binaries ready in $CACHE"
echo "$CACHE"
