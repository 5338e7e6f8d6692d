#!/usr/bin/env bash
# Finds or builds krew's own tools, which check the kubectl plugin's krew manifest
# (deploy/krew/featureenv.yaml): validate-krew-manifest (the validator krew-index runs on
# every submitted manifest) and krew itself as kubectl-krew (the validator installs the
# plugin with `kubectl krew install`, and so does a user). Prints the directory that
# holds both.
#
# Order of preference:
#   1. $FEATUREENV_KREW_TOOLS, when it holds both;
#   2. $HOME/.cache/featureenv-operator/go-bin/krew-<version>/, built once with
#      `go install sigs.k8s.io/krew/cmd/...@<version>` through the Go module proxy and
#      reused afterwards.
#
# As hack/k8s-binaries.sh: the build goes into a temporary directory renamed into place
# only when both binaries are there; one build at a time; progress on stderr.
set -euo pipefail

# sigs.k8s.io/krew's release; the manifest's apiVersion (krew.googlecontainertools.github.com/v1alpha2)
# is the one it validates.
KREW_VERSION="v0.4.3"
CACHE="${FEATUREENV_GO_BIN_CACHE:-$HOME/.cache/featureenv-operator/go-bin}/krew-$KREW_VERSION"

say() { echo "krew-tools: $*" >&2; }
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"

has_all() { [[ -x "$1/validate-krew-manifest" && -x "$1/kubectl-krew" ]]; }

if [[ -n "${FEATUREENV_KREW_TOOLS:-}" ]]; then
    if has_all "$FEATUREENV_KREW_TOOLS"; then
        echo "$FEATUREENV_KREW_TOOLS"
        exit 0
    fi
    say "FEATUREENV_KREW_TOOLS=$FEATUREENV_KREW_TOOLS lacks validate-krew-manifest or kubectl-krew"
    exit 1
fi
if has_all "$CACHE"; then
    echo "$CACHE"
    exit 0
fi
if ! command -v go >/dev/null; then
    say "validate-krew-manifest and kubectl-krew are missing and there is no Go to build them: install Go (https://go.dev/dl), or set FEATUREENV_KREW_TOOLS to a directory with both"
    exit 1
fi

locked_stage "$CACHE" .krew-build.lock "krew's tools"

build() { # command-name installed-as
    local cmd="$1" name="$2" start=$SECONDS
    say "building $name from sigs.k8s.io/krew/cmd/$cmd@$KREW_VERSION (first time only; about 30 s)..."
    # -v names each package as it compiles; the count is the progress shown.
    if ! GOBIN="$STAGE" go install -v "sigs.k8s.io/krew/cmd/$cmd@$KREW_VERSION" 2>"$STAGE/$cmd.log"; then
        say "building $name failed; the last lines of the Go output:"
        tail -20 "$STAGE/$cmd.log" >&2
        say "a failed module download means the Go module proxy could not be reached; set FEATUREENV_KREW_TOOLS to prebuilt binaries instead."
        exit 1
    fi
    [[ "$cmd" == "$name" ]] || mv "$STAGE/$cmd" "$STAGE/$name"
    say "built $name in $((SECONDS - start)) s ($(grep -c . "$STAGE/$cmd.log" || true) packages compiled; none when Go's build cache had them)"
}

build validate-krew-manifest validate-krew-manifest
# kubectl runs a plugin named kubectl-krew for `kubectl krew`.
build krew kubectl-krew
rm -f "$STAGE"/*.log

chmod 755 "$STAGE"
rm -rf "$CACHE"
mv "$STAGE" "$CACHE"
trap - EXIT
say "krew's tools ready in $CACHE"
echo "$CACHE"
