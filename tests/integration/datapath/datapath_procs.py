"""Process helpers for the data-path integration tests (`tessera up`, free ports)."""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[3]
TESSERA = [sys.executable, "-c", "import sys; from tessera.cli import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Up:
    """`tessera up FILE --port P` with its output collected line by line."""

    def __init__(self, file: pathlib.Path, run_dir: pathlib.Path) -> None:
        self.port = free_port()
        self.run_dir = run_dir
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*TESSERA, "up", str(file), f"--port={self.port}", f"--run-dir={run_dir}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at its end: an open pipe is a ResourceWarning, an error
            for line in self.proc.stdout:
                self._q.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(
            f"no line starting with {prefix!r}; output so far:\n" + "\n".join(self.lines)
        )

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Until `tessera up` says it serves (then it prints the examples, ending with Ctrl-C)."""
        self.wait_for("ready:", timeout_s=timeout_s)
        self.wait_for("Ctrl-C", timeout_s=10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
