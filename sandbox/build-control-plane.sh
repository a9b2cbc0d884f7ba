#!/usr/bin/env bash
# Builds kube-apiserver and fetches etcd from Debian's own packages, with nothing installed
# system-wide, and caches both in $CACHE_DIR/bin. Debian bookworm ships no kube-apiserver binary,
# but its `kubernetes` source package is the whole 1.20 tree with vendor/, which builds offline.
# Usage: build-control-plane.sh CACHE_DIR
set -euo pipefail

cache=${1:?usage: build-control-plane.sh CACHE_DIR}
bin="$cache/bin"
work="$cache/build"
if [[ -x "$bin/kube-apiserver" && -x "$bin/etcd" ]]; then
  echo "control plane binaries already cached in $bin"
  exit 0
fi
say() { printf '[sandbox build] %s\n' "$*"; }
mkdir -p "$bin" "$work"

# A private apt configuration: the machine's own Debian sources plus deb-src, with lists and
# caches in our folder, so the system's apt state is not touched.
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d"
: > "$apt_dir/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [[ -f "$f" ]] || continue
  grep -E '^deb ' "$f" | tee -a "$apt_dir/sources.list" | sed 's/^deb /deb-src /' >> "$apt_dir/sources.list"
done
for f in /etc/apt/sources.list.d/*.sources; do
  [[ -f "$f" ]] || continue
  cp "$f" "$apt_dir/sources.list.d/$(basename "$f")"
  sed -E 's/^Types: *deb$/Types: deb deb-src/' "$f" > "$apt_dir/sources.list.d/src-$(basename "$f")"
  rm "$apt_dir/sources.list.d/$(basename "$f")"
done
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)
say "refreshing a private apt index (with deb-src)"
apt-get "${apt_opts[@]}" -qq update

cd "$work"
if [[ ! -d "$work/src" ]]; then
  say "downloading Debian's kubernetes source package"
  apt-get "${apt_opts[@]}" -qq source --download-only kubernetes
  say "unpacking the source tree"
  dpkg-source --no-check -x kubernetes_*.dsc "$work/src-tmp" > /dev/null
  mv "$work/src-tmp" "$work/src"
fi

say "downloading Go 1.19, etcd and build helpers (.deb files, unpacked privately)"
mkdir -p "$work/debs" "$work/root"
(cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download \
  golang-1.19-go golang-1.19-src etcd-server rsync libpopt0 golang-github-modern-go-reflect2-dev)
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done

# reflect2 v1.0.1 (vendored) built with Go 1.19 segfaults on the first custom-resource create;
# Debian's 1.0.2 sources do not.
say "replacing vendored reflect2 with Debian's 1.0.2"
reflect_src=$(dirname "$(find "$work/root/usr/share/gocode/src" -path '*modern-go/reflect2/reflect2.go' | head -n1)")
rm -rf "$work/src/vendor/github.com/modern-go/reflect2"
cp -r "$reflect_src" "$work/src/vendor/github.com/modern-go/reflect2"

say "building kube-apiserver (about 3 minutes on 2 cores)"
goroot="$work/root/usr/lib/go-1.19"
(
  cd "$work/src"
  unset GOPATH GOFLAGS
  export GOROOT="$goroot" GOPROXY=off GO111MODULE=on GOFLAGS=-mod=vendor CGO_ENABLED=0 \
    GOCACHE="$work/gocache" \
    PATH="$goroot/bin:$work/root/usr/bin:$PATH" \
    LD_LIBRARY_PATH="$work/root/usr/lib/x86_64-linux-gnu:$work/root/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  make WHAT=cmd/kube-apiserver > "$work/make.log" 2>&1 || { tail -n 40 "$work/make.log"; exit 1; }
)
built=$(find "$work/src/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
install -m 0755 "$built" "$bin/kube-apiserver"
install -m 0755 "$work/root/usr/bin/etcd" "$bin/etcd"
say "cached kube-apiserver and etcd in $bin"
rm -rf "$work"
