"""Server processes the sandbox starts (etcd, kube-apiserver, a Prefect server, a worker): each in
a session of its own with its output in a log file, all stopped together, children included."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


class ProcessExited(RuntimeError):
    """A server process ended on its own."""


class ProcessGroup:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")  # a restarted process adds to its log
        # A session of its own: Ctrl-C in a terminal reaches only us, and stop() reaches its children.
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._processes.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self._processes:
            if proc.poll() is not None:
                raise ProcessExited(f"{name} exited with {proc.returncode}; see {self.log_dir}/{name}.log")

    def stop_one(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Signal one process's group (SIGKILL after ``timeout``) and forget it."""
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._processes = [(name, p) for name, p in self._processes if p is not proc]

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM every group, newest first; SIGKILL what is still there after ``timeout``."""
        for _, proc in reversed(self._processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self._processes):
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._processes.clear()
