#!/usr/bin/env bash
# Builds the operator image without a container daemon (`make image`), the image the
# Dockerfile describes: the release binary at /featureenv-operator on a distroless-cc-like
# root filesystem, user 65532:65532, entrypoint /featureenv-operator, command `run`, the
# same OCI labels. Writes it as an OCI archive:
#   dist/featureenv-operator-<version>.oci.tar   (skopeo, podman, `docker load` >= 25)
# tagged <version> (Cargo.toml's, which must equal the chart's appVersion), and named
# ghcr.io/featureenv/featureenv-operator:<version> (io.containerd.image.name), the
# chart's default image.
#
# The root filesystem holds exactly what the binary needs at run time:
#   - the shared libraries `ldd` lists (glibc and libgcc_s), taken from this host. It
#     must be Debian bookworm (the script refuses any other), whose glibc 2.36 is the one
#     gcr.io/distroless/cc-debian12 ships: both images carry the same release's libraries
#     (their point releases follow each one's updates).
#     With each package's copyright file and dpkg status entry (distroless's
#     /var/lib/dpkg/status.d convention, which vulnerability scanners read);
#   - /etc/passwd and /etc/group with root and nonroot (65532), /etc/nsswitch.conf;
#   - /etc/ssl/certs/ca-certificates.crt: the AWS SDK's TLS (rustls-native-certs) reads
#     the system bundle;
#   - /home/nonroot and /tmp, as in distroless. The binary writes no file (only
#     `crds --out-dir` does); the chart mounts an emptyDir on /tmp anyway.
# Reproducible: every timestamp is the last commit's time (SOURCE_DATE_EPOCH overrides
# it), files are root-owned and walked in order, so the same binary gives the same
# digests.
#
# Environment: OPERATOR_BIN (default: the release binary; the Makefile builds it),
# DIST (default: dist/ in the repository).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/featureenv-operator/target}"
OPERATOR_BIN="${OPERATOR_BIN:-$CARGO_TARGET_DIR/release/featureenv-operator}"
DIST="${DIST:-$ROOT/dist}"
PYTHON="${PYTHON:-python3}"
REPOSITORY="ghcr.io/featureenv/featureenv-operator"
SOURCE_URL="https://github.com/featureenv/featureenv-operator"
NONROOT=65532

say() { echo "image: $*" >&2; }
die() { say "error: $*"; exit 1; }

# toml_package_field KEY: a string field of Cargo.toml's [package] table.
toml_package_field() {
    awk -v key="$1" '
        /^\[/ { in_package = ($0 == "[package]") }
        in_package && $1 == key && $2 == "=" { sub(/^[^"]*"/, ""); sub(/".*$/, ""); print; exit }
    ' "$ROOT/Cargo.toml"
}

VERSION="$(toml_package_field version)"
DESCRIPTION="$(toml_package_field description)"
[[ -n "$VERSION" && -n "$DESCRIPTION" ]] || die "no version or description in Cargo.toml's [package]"
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$ROOT/charts/featureenv-operator/Chart.yaml")"
[[ "$APP_VERSION" == "$VERSION" ]] ||
    die "Cargo.toml's version $VERSION differs from the chart's appVersion '$APP_VERSION' (its default image tag)"
REVISION="$(git -C "$ROOT" rev-parse HEAD)"
EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct)}"
CREATED="$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
ARCHIVE="$DIST/featureenv-operator-$VERSION.oci.tar"

host="$(sed -n 's/^ID=//p' /etc/os-release) $(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)"
[[ "$host" == "debian bookworm" ]] ||
    die "the libraries are copied from this host, which must be Debian bookworm (distroless cc-debian12's release), not '$host'"
[[ -x "$OPERATOR_BIN" ]] || die "no operator binary at $OPERATOR_BIN (make image builds it)"
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || die "no CA bundle at /etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates)"
if ! command -v umoci >/dev/null; then
    say "installing umoci"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends umoci >/dev/null
fi

mkdir -p "$DIST"
WORK="$(mktemp -d "$DIST/.image-work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"
LAYOUT="$WORK/layout"
BUNDLE="$WORK/bundle"
mkdir -p "$ROOTFS"

say "version $VERSION, revision $REVISION, created $CREATED"
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]]; then
    say "note: the work tree has changes; the revision label names HEAD without them"
fi
say "binary $OPERATOR_BIN ($(du -h "$OPERATOR_BIN" | cut -f1))"
install -D -m 0755 "$OPERATOR_BIN" "$ROOTFS/featureenv-operator"

# The binary's shared libraries (and theirs: ldd lists the closure) at the paths the
# dynamic linker looks them up by, plus each one's package metadata.
libs="$(ldd "$OPERATOR_BIN")"
if grep -q 'not found' <<<"$libs"; then die "unresolved libraries: $libs"; fi
mapfile -t lib_paths < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs" | sort -u)
declare -A packages=()
for lib in "${lib_paths[@]}"; do
    install -D -m 0755 "$(readlink -f "$lib")" "$ROOTFS$lib"
    pkg="$(dpkg -S "$lib" 2>/dev/null | head -n1 | cut -d: -f1)" || true
    [[ -n "$pkg" ]] || pkg="$(dpkg -S "$(readlink -f "$lib")" | head -n1 | cut -d: -f1)"
    packages[$pkg]=1
    say "library $lib ($pkg)"
done
packages[ca-certificates]=1
mapfile -t package_names < <(printf '%s\n' "${!packages[@]}" | sort)
for pkg in "${package_names[@]}"; do
    install -D -m 0644 "/usr/share/doc/$pkg/copyright" "$ROOTFS/usr/share/doc/$pkg/copyright"
    mkdir -p "$ROOTFS/var/lib/dpkg/status.d"
    dpkg-query -s "$pkg" >"$ROOTFS/var/lib/dpkg/status.d/$pkg"
    say "package $(dpkg-query -W -f '${Package} ${Version}' "$pkg")"
done

install -d -m 0755 "$ROOTFS/etc"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
cat >"$ROOTFS/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$ROOTFS/etc/group" <<EOF
root:x:0:
nobody:x:65534:
nonroot:x:$NONROOT:
EOF
cat >"$ROOTFS/etc/nsswitch.conf" <<EOF
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$ROOTFS/etc/passwd" "$ROOTFS/etc/group" "$ROOTFS/etc/nsswitch.conf"
install -d -m 0700 "$ROOTFS/home/nonroot"
install -d -m 0700 "$ROOTFS/root"
install -d -m 1777 "$ROOTFS/tmp"

chown -R 0:0 "$ROOTFS"
chown "$NONROOT:$NONROOT" "$ROOTFS/home/nonroot"
find "$ROOTFS" -exec touch -h -d "@$EPOCH" {} +

say "layout (umoci $(umoci --version | awk '{print $3}'))"
history=(--history.created "$CREATED" --history.author featureenv-operator)
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:$VERSION"
# Unpack the empty image, fill its bundle and repack: umoci 0.4.7's `insert` writes a
# layer without the tar end-of-archive blocks, which GNU tar and Python's tarfile reject
# (umoci#436, fixed after 0.4.7); repack writes complete layers.
umoci unpack --image "$LAYOUT:$VERSION" "$BUNDLE" >/dev/null
cp -a "$ROOTFS/." "$BUNDLE/rootfs/"
touch -h -d "@$EPOCH" "$BUNDLE/rootfs"
umoci repack --image "$LAYOUT:$VERSION" "${history[@]}" \
    --history.created_by "hack/image.sh: root filesystem" "$BUNDLE"
umoci config --image "$LAYOUT:$VERSION" "${history[@]}" \
    --history.created_by "hack/image.sh: configuration" \
    --created "$CREATED" --author featureenv-operator \
    --os linux --architecture amd64 \
    --config.user "$NONROOT:$NONROOT" \
    --config.entrypoint /featureenv-operator --config.cmd run \
    --config.workingdir /home/nonroot \
    --config.exposedports 8080/tcp \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.label org.opencontainers.image.title=featureenv-operator \
    --config.label "org.opencontainers.image.description=$DESCRIPTION" \
    --config.label "org.opencontainers.image.version=$VERSION" \
    --config.label "org.opencontainers.image.revision=$REVISION" \
    --config.label "org.opencontainers.image.source=$SOURCE_URL" \
    --config.label org.opencontainers.image.licenses=Apache-2.0
umoci gc --layout "$LAYOUT"

# umoci names the manifest by its tag (org.opencontainers.image.ref.name); containerd and
# `docker load` take the full name from io.containerd.image.name, as BuildKit writes it.
"$PYTHON" - "$LAYOUT/index.json" "$REPOSITORY:$VERSION" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
with open(path) as f:
    index = json.load(f)
(manifest,) = index["manifests"]
manifest.setdefault("annotations", {})["io.containerd.image.name"] = name
with open(path, "w") as f:
    json.dump(index, f, separators=(",", ":"), sort_keys=True)
EOF
find "$LAYOUT" -exec touch -h -d "@$EPOCH" {} +

tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner --mode=a+rX --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$LAYOUT" -cf "$ARCHIVE.partial" .
mv "$ARCHIVE.partial" "$ARCHIVE"

manifest_digest="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$LAYOUT/index.json")"
say "wrote $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)), manifest $manifest_digest"
say "name $REPOSITORY:$VERSION; push: skopeo copy oci-archive:$ARCHIVE docker://$REPOSITORY:$VERSION"
