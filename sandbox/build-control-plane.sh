#!/usr/bin/env bash
# Builds the Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler) and
# fetches etcd from Debian's own packages, with nothing installed system-wide, and caches them in
# $CACHE_DIR/bin. Debian bookworm ships none of the three Kubernetes binaries, but its `kubernetes`
# source package is the whole 1.20 tree with vendor/, which builds offline. Only what the cache lacks
# is built: one `make WHAT=...` for all the missing commands shares one compile cache.
# Usage: build-control-plane.sh CACHE_DIR
set -euo pipefail

cache=${1:?usage: build-control-plane.sh CACHE_DIR}
bin="$cache/bin"
work="$cache/build"
started=$SECONDS
say() { printf '[sandbox build] %s\n' "$*"; }

# One build at a time per cache (parallel test workers may all find the cache empty): the others
# wait, then find what it built.
mkdir -p "$cache"
exec 9> "$cache/build.lock"
if ! flock -n 9; then
  say "another build into $cache is running; waiting for it to finish"
  flock 9
fi

commands=()
for name in kube-apiserver kube-controller-manager kube-scheduler; do
  [[ -x "$bin/$name" ]] || commands+=("$name")
done
need_etcd=0
[[ -x "$bin/etcd" ]] || need_etcd=1
if [[ ${#commands[@]} -eq 0 && $need_etcd -eq 0 ]]; then
  echo "control plane binaries already cached in $bin"
  exit 0
fi
say "missing from $bin: ${commands[*]:-}$([[ $need_etcd -eq 1 ]] && echo ' etcd')"
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
mkdir -p "$work/debs" "$work/root"
if [[ $need_etcd -eq 1 ]]; then
  say "downloading etcd (Debian's etcd-server .deb, unpacked privately)"
  (cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download etcd-server)
  dpkg -x "$work"/debs/etcd-server_*.deb "$work/root"
  install -m 0755 "$work/root/usr/bin/etcd" "$bin/etcd"
  say "cached etcd in $bin"
fi

if [[ ${#commands[@]} -gt 0 ]]; then
  if [[ ! -d "$work/src" ]]; then
    say "downloading Debian's kubernetes source package"
    apt-get "${apt_opts[@]}" -qq source --download-only kubernetes
    say "unpacking the source tree"
    dpkg-source --no-check -x kubernetes_*.dsc "$work/src-tmp" > /dev/null
    mv "$work/src-tmp" "$work/src"
  fi

  say "downloading Go 1.19 and build helpers (.deb files, unpacked privately)"
  (cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download \
    golang-1.19-go golang-1.19-src rsync libpopt0 golang-github-modern-go-reflect2-dev)
  for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done

  # reflect2 v1.0.1 (vendored) built with Go 1.19 segfaults on the first custom-resource create;
  # Debian's 1.0.2 sources do not.
  say "replacing vendored reflect2 with Debian's 1.0.2"
  reflect_src=$(dirname "$(find "$work/root/usr/share/gocode/src" -path '*modern-go/reflect2/reflect2.go' | head -n1)")
  rm -rf "$work/src/vendor/github.com/modern-go/reflect2"
  cp -r "$reflect_src" "$work/src/vendor/github.com/modern-go/reflect2"

  what=$(printf 'cmd/%s ' "${commands[@]}")
  # Measured on 2 cores: kube-apiserver alone 3-4 minutes; kube-controller-manager and kube-scheduler
  # together 9 minutes (source download included) while other work shared the cores.
  say "building ${commands[*]} (several minutes on 2 cores)"
  goroot="$work/root/usr/lib/go-1.19"
  (
    cd "$work/src"
    unset GOPATH GOFLAGS
    export GOROOT="$goroot" GOPROXY=off GO111MODULE=on GOFLAGS=-mod=vendor CGO_ENABLED=0 \
      GOCACHE="$work/gocache" \
      PATH="$goroot/bin:$work/root/usr/bin:$PATH" \
      LD_LIBRARY_PATH="$work/root/usr/lib/x86_64-linux-gnu:$work/root/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    # Progress: make prints each command as it starts; a line a minute says it is still compiling.
    make WHAT="${what% }" > "$work/make.log" 2>&1 &
    build=$!
    while kill -0 "$build" 2> /dev/null; do
      for _ in $(seq 60); do
        kill -0 "$build" 2> /dev/null || break
        sleep 1
      done
      kill -0 "$build" 2> /dev/null && say "still compiling ($((SECONDS - started)) s so far; log: $work/make.log)"
    done
    wait "$build" || { tail -n 40 "$work/make.log"; exit 1; }
  )
  for name in "${commands[@]}"; do
    built=$(find "$work/src/_output" -type f -name "$name" -perm -u+x | head -n1)
    [[ -n "$built" ]] || { say "make did not produce $name"; tail -n 40 "$work/make.log"; exit 1; }
    install -m 0755 "$built" "$bin/$name"
  done
  say "cached ${commands[*]} in $bin"
fi
rm -rf "$work"
say "done in $((SECONDS - started)) s"
