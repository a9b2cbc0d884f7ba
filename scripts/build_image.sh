#!/usr/bin/env bash
# Opt-in: build deployments/Dockerfile for real on a machine with no Docker engine and no Docker Hub,
# with Debian's packages only, as root:
#   - the base: Debian bookworm with its python3.11 and pip, made by mmdebstrap from Debian's archive,
#     imported into buildah's storage as localhost/mssql-auth-rotation-base:bookworm (once; reused);
#   - the image: `buildah bud --isolation chroot` (no daemon, no user namespace, no overlay mount) with
#     vfs storage, FROM that base through the Dockerfile's own BASE_IMAGE argument, nothing else changed;
#   - then the image's CMD (`prefect version`), run in it as its USER.
# The base differs from python:3.11-slim-bookworm, and only here: Debian's Python 3.11.2 in /usr/bin (the
# official image builds a later CPython 3.11 into /usr/local), with Debian's PEP 668 marker removed so
# that pip may install into it as the official image's pip does, and async-timeout (hashed) added, which
# redis needs only below Python 3.11.3 (deployments/README.md, "The image"). The build itself is the
# Dockerfile's, unchanged; only this machine's CA bundle is mounted for its RUN steps when its network
# needs one (PIP_CERT or SSL_CERT_FILE), and is not in the image.
#
# Usage: scripts/build_image.sh [TAG]          (default localhost/mssql-auth-rotation:dev)
#   IMAGE_STORE=DIR  buildah's storage (default: containers/ in the project's cache); remove the
#                    folder to start over. Nothing is written to /var/lib/containers.
#   IMAGE_KEEP=0     remove the built image afterwards (the base stays, for the next build)
# Prints each phase's seconds. tests/image/test_image_build.py runs it when MSSQL_IMAGE_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[build-image] %s\n' "$*"; }
tag=${1:-localhost/mssql-auth-rotation:dev}
base=localhost/mssql-auth-rotation-base:bookworm
store=${IMAGE_STORE:-${MSSQL_ROTATION_CACHE:-$HOME/.cache/mssql-auth-rotation}/containers}

if [[ $(id -u) -ne 0 ]]; then
  echo "[build-image] needs root: buildah's chroot isolation and mmdebstrap's root mode" >&2
  exit 1
fi
need=()
command -v buildah > /dev/null || need+=(buildah)
command -v mmdebstrap > /dev/null || need+=(mmdebstrap)
if ((${#need[@]})); then
  say "installing ${need[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi

b() { buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }
SECONDS=0
phase() {
  say "$1: ${SECONDS} s"
  SECONDS=0
}

# This machine's CA bundle, when its network needs one (PIP_CERT, SSL_CERT_FILE: a TLS-inspecting proxy
# in front of PyPI), is mounted over the base's for the RUN steps only; it is not in the image.
trust=()
bundle=${PIP_CERT:-${SSL_CERT_FILE:-}}
if [[ -n $bundle && -f $bundle ]]; then
  trust=(--volume "$bundle:/etc/ssl/certs/ca-certificates.crt:ro")
fi

if ! b inspect --type image "$base" > /dev/null 2>&1; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  say "making the base $base with mmdebstrap (Debian bookworm, python3.11, pip)"
  # passwd: the Dockerfile's groupadd/useradd. ca-certificates: pip's downloads from PyPI.
  mmdebstrap --quiet --variant=minbase --mode=root \
    --include=python3.11,python3-pip,python-is-python3,passwd,ca-certificates \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar" http://deb.debian.org/debian
  phase "mmdebstrap"
  container=$(b from scratch)
  mount=$(b mount "$container")
  tar -C "$mount" -xf "$work/rootfs.tar"
  # Debian's Python is 3.11.2; the pinned official base has a later 3.11 (its bookworm images came after
  # 3.11.3), for which image-requirements.txt is resolved. Below 3.11.3, redis needs async-timeout
  # too, so `pip check` would fail on this stand-in alone: it gets that one package (hashed) in the base.
  printf 'async-timeout==5.0.1 --hash=sha256:%s\n' \
    39e3809566ff85354557ec2398b55e096c8364bacac9405a7a1fa429e77fe76c > "$mount/tmp/base-requirements.txt"
  b umount "$container" > /dev/null
  b run --isolation chroot "${trust[@]}" "$container" -- \
    pip install --quiet --no-cache-dir --require-hashes --no-deps -r /tmp/base-requirements.txt
  b run --isolation chroot "$container" -- rm /tmp/base-requirements.txt
  b config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 "$container"
  b commit --quiet --rm "$container" "$base" > /dev/null
  rm -rf "$work"
  trap - EXIT
  phase "base imported"
fi

say "building $tag from deployments/Dockerfile (buildah bud --isolation chroot, vfs)"
b bud --isolation chroot --layers=false --pull=never "${trust[@]}" \
  --build-arg "BASE_IMAGE=$base" -f deployments/Dockerfile -t "$tag" .
phase "image built"

container=$(b from --pull=never "$tag")
trap 'b rm "$container" > /dev/null' EXIT
say "running the image's CMD as $(b inspect --format '{{.OCIv1.Config.User}}' "$tag"):"
mapfile -t cmd < <(b inspect --format '{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}' "$tag")
b run --isolation chroot "$container" -- "${cmd[@]}"
phase "CMD ran"
b rm "$container" > /dev/null
trap - EXIT
b images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$tag"
if [[ ${IMAGE_KEEP:-1} == 0 ]]; then
  b rmi "$tag" > /dev/null
fi
