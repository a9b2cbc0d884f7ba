#!/usr/bin/env bash
# One-time set-up, safe to run again: system packages, the virtualenv, and the sandbox's control
# plane (kube-apiserver + etcd, built once from Debian's packages and cached in
# ~/.cache/mssql-auth-rotation). Every README command runs this first; a good state is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup] %s\n' "$*"; }

# dpkg-dev unpacks Debian's kubernetes source package; kubernetes-client is kubectl 1.20, which
# matches the sandbox's API server; postgresql's server programs run the private PostgreSQL of
# `make stack PREFECT_DB=postgres` (sandbox/postgres.py). Only installed when missing.
need=()
command -v dpkg-source > /dev/null || need+=(dpkg-dev)
command -v kubectl > /dev/null || need+=(kubernetes-client)
command -v python3 > /dev/null || need+=(python3 python3-venv)
compgen -G '/usr/lib/postgresql/*/bin/initdb' > /dev/null || command -v initdb > /dev/null || need+=(postgresql)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "[setup] missing system packages: ${need[*]}; install them (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  say "installing system packages: ${need[*]}"
  # Debian's postgresql creates a system cluster (main, port 5432) and starts it. The stack runs a
  # private cluster of its own (sandbox/postgres.py) and needs no system one, so nothing is started
  # while we install: a policy-rc.d answering 101 ("action forbidden") for the time of apt-get (a
  # machine's own policy-rc.d is left alone), and any cluster that still came up is stopped. The main
  # cluster stays created but stopped (`pg_lsclusters` lists it; `pg_dropcluster 15 main` removes it).
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [[ " ${need[*]} " == *" postgresql "* && ! -e $policy ]]; then
    printf '#!/bin/sh\n# scripts/setup.sh, while it installs postgresql\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
  if [[ -n $own_policy ]]; then
    rm -f "$policy"
    trap - EXIT
  fi
  if [[ " ${need[*]} " == *" postgresql "* ]] && command -v pg_lsclusters > /dev/null; then
    pg_lsclusters --no-header | while read -r version cluster _ status _; do
      if [[ $status == online ]]; then
        say "stopping the system cluster $version/$cluster that installing postgresql started"
        pg_ctlcluster "$version" "$cluster" stop
      fi
    done
  fi
fi

stamp=.venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || requirements.lock -nt $stamp ]]; then
  say "creating the virtualenv in .venv and installing the project (pinned by requirements.lock)"
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2> /dev/null
  if ! .venv/bin/python -m pip install -q -c requirements.lock -e ".[dev]" > .venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    exit 1
  fi
  .venv/bin/python -c "import prefect, kubernetes, pymssql" # fail here, not later, if the install failed
  touch "$stamp"
fi

.venv/bin/python -c "from sandbox.binaries import ensure_binaries; print('[setup] control plane binaries:', ensure_binaries())"
