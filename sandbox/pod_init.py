"""A generic pod's container start, run by ``sandbox.process_pods`` inside the container's namespaces.

``process_pods`` starts it as ``unshare --mount --uts --pid --fork --mount-proc --kill-child python
-I -S pod_init.py`` (PID 1 of a PID namespace of its own, in a private mount namespace) and writes the
container's spec to its stdin as JSON (so no secret value of the container's environment is ever
written to a file). It then:

1. bind-mounts each ``{"source", "target", "read_only"}`` of ``mounts`` (parents before children):
   the image's WORKDIR, the service-account folder, the pod's volumes, HOME and /tmp;
2. sets the hostname to the pod's name;
3. changes to ``workdir`` and replaces itself (``execvpe``) by the container's ``argv`` with exactly
   ``env``, stdin on /dev/null: the container's main process is PID 1, as in a container.

A mount point that does not exist is made without touching the host's filesystem: its nearest
existing ancestor is replaced, in this mount namespace only, by a tmpfs that mirrors it (each entry
bind-mounted back, symlinks copied), where the missing folders are then created. The folders used for
staging are under the pod's own folder (``scratch``), which the sandbox removes. Host folders are
reached through descriptors opened before the first mount, since a mount may hide them.

Standard library only, and imports nothing of the sandbox: it runs with ``python -I -S``.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
import tempfile
from typing import Any

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384

START_ERROR_EXIT = 128  # what a container runtime reports for a container that could not start

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
        data.encode() if data else None,
    )  # fmt: skip
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


class Mounter:
    def __init__(self, scratch: str) -> None:
        self.scratch = scratch
        self._ours: set[int] = set()  # devices of the tmpfs mirrors made here: writable, private

    def ensure_dir(self, path: str) -> str:
        """``path`` (symlinks resolved) as an existing folder, made without writing to the host."""
        path = os.path.realpath(path)
        if os.path.isdir(path):
            return path
        ancestor = path
        while not os.path.lexists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            raise NotADirectoryError(f"{ancestor} is not a folder: cannot mount on {path}")
        if os.stat(ancestor).st_dev not in self._ours:
            self._mirror(ancestor)
        os.makedirs(path, exist_ok=True)
        return path

    def _mirror(self, folder: str) -> None:
        if folder == "/":
            raise OSError(f"cannot create a mount point in / without writing to the host ({folder})")
        status = os.stat(folder)
        staging = tempfile.mkdtemp(dir=self.scratch)
        mode = f"mode={status.st_mode & 0o7777:o},uid={status.st_uid},gid={status.st_gid}"
        _mount("tmpfs", staging, "tmpfs", 0, mode)
        for entry in os.scandir(folder):
            copy = os.path.join(staging, entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), copy)
                continue
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(copy)
            else:
                open(copy, "x").close()
            _mount(entry.path, copy, None, MS_BIND | MS_REC)
        _mount(staging, folder, None, MS_MOVE)
        self._ours.add(os.stat(folder).st_dev)

    def bind(self, source: str, target: str, read_only: bool) -> None:
        target = self.ensure_dir(target)
        _mount(source, target, None, MS_BIND | MS_REC)
        if read_only:
            _mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _held(path: str) -> str:
    """A path to ``path`` that stays valid whatever is mounted later (an O_PATH descriptor's)."""
    return f"/proc/self/fd/{os.open(path, os.O_PATH)}"


def main() -> int:
    spec: dict[str, Any] = json.load(sys.stdin)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    argv: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    try:
        # Every host folder used is opened first and reached through its descriptor: a mount (say
        # on /tmp) may hide where it lies. The descriptors close on exec.
        mounter = Mounter(_held(spec["scratch"]))
        mounts = [(_held(m["source"]), m["target"], m["read_only"]) for m in spec["mounts"]]
        for source, target, read_only in sorted(mounts, key=lambda m: m[1].count("/")):
            mounter.bind(source, target, read_only)
        socket.sethostname(spec["hostname"])
        os.chdir(mounter.ensure_dir(spec["workdir"]))
    except OSError as exc:
        print(f"sandbox: the container could not be set up: {exc}", file=sys.stderr, flush=True)
        return START_ERROR_EXIT
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 (the container's own command, as a runtime runs it)
    except OSError as exc:
        print(
            f'sandbox: exec: "{argv[0]}": {exc.strerror} (PATH={env.get("PATH", "")})',
            file=sys.stderr,
            flush=True,
        )
    return START_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
