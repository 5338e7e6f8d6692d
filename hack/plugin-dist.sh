#!/usr/bin/env bash
# Packs the kubectl plugin for krew: the archive a release attaches and the manifest
# that points at it.
#
#   hack/plugin-dist.sh [--bin PATH] [--out DIR] [--release-url URL]
#
#   --bin          the kubectl-featureenv binary (default: the release build,
#                  $CARGO_TARGET_DIR/release/kubectl-featureenv; `make plugin-dist` builds it)
#   --out          where to write (default: dist/ of the repository)
#   --release-url  where the archive will be downloaded from (default: the project's
#                  GitHub release, <homepage>/releases/download/v<version>)
#
# Writes OUT/kubectl-featureenv-v<version>-linux-amd64.tar.gz (kubectl-featureenv, LICENSE,
# README.md from deploy/krew/) and OUT/featureenv.yaml, deploy/krew/featureenv.yaml with
# the version, the URL and the archive's sha256 filled in; prints both paths. <version> is
# Cargo.toml's [package] version. The archive is reproducible: same inputs, same sha256
# (sorted names, owner 0, mtimes from SOURCE_DATE_EPOCH or the last commit, gzip -n).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/featureenv-operator/target}"
TEMPLATE="$ROOT/deploy/krew/featureenv.yaml"
# Only the platform this project can build (see the template's header for the others).
PLATFORM="linux-amd64"

bin="$CARGO_TARGET_DIR/release/kubectl-featureenv"
out="$ROOT/dist"
release_url=""
while (($#)); do
    case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --release-url) release_url="$2"; shift 2 ;;
    *) echo "usage: $0 [--bin PATH] [--out DIR] [--release-url URL]" >&2; exit 2 ;;
    esac
done

die() { echo "plugin-dist: $*" >&2; exit 1; }

[[ -f "$bin" && -x "$bin" ]] ||
    die "$bin is not an executable file: build it first (cargo build --release --bin kubectl-featureenv, as make plugin-dist does)"
[[ -f "$ROOT/LICENSE" ]] || die "$ROOT/LICENSE is missing: krew-index and validate-krew-manifest require a license file in the archive"

# The [package] table's version (the workspace table has none).
version="$(awk '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { gsub(/[" ]/, "", $0); sub(/^version=/, ""); print; exit }' "$ROOT/Cargo.toml")"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] || die "no semantic version in Cargo.toml's [package] table (found '$version')"
homepage="$(sed -n 's/^  homepage: *//p' "$TEMPLATE")"
[[ "$homepage" == https://* ]] || die "no homepage in $TEMPLATE"
release_url="${release_url:-$homepage/releases/download/v$version}"

name="kubectl-featureenv-v$version-$PLATFORM"
archive="$out/$name.tar.gz"
mkdir -p "$out"
stage="$(mktemp -d "$out/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$bin" "$stage/kubectl-featureenv"
install -m 0644 "$ROOT/LICENSE" "$stage/LICENSE"
install -m 0644 "$ROOT/deploy/krew/README.md" "$stage/README.md"

epoch="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --format=gnu \
    -C "$stage" -cf - kubectl-featureenv LICENSE README.md | gzip -n >"$stage/archive.tar.gz"
mv "$stage/archive.tar.gz" "$archive"
sha256="$(sha256sum "$archive" | cut -d' ' -f1)"

# The URL becomes sed replacement text: refuse the characters that would change it.
[[ "$release_url" != *[\|\&\\]* ]] || die "--release-url must not contain |, & or \\"
# The template's header comment explains the placeholders; the rendered file says
# where it came from instead.
{
    echo "# Rendered by hack/plugin-dist.sh from deploy/krew/featureenv.yaml: edit that, not this."
    sed -e '1,/^apiVersion:/{/^#/d}' \
        -e "s|@VERSION@|$version|g" -e "s|@RELEASE_URL@|$release_url|g" -e "s|@SHA256@|$sha256|g" "$TEMPLATE"
} >"$stage/featureenv.yaml"
if grep -n '@[A-Z_]*@' "$stage/featureenv.yaml" >&2; then
    die "placeholders left unrendered in $TEMPLATE (above)"
fi
mv "$stage/featureenv.yaml" "$out/featureenv.yaml"

echo "plugin-dist: v$version $PLATFORM sha256 $sha256" >&2
echo "$archive"
echo "$out/featureenv.yaml"
