"""A real ``tritonserver`` on this machine, from the ``nvidia-pytriton`` wheel, on free loopback ports.

The wheel carries a CPU-capable server binary, the Python backend and a backend stub per Python
version. The server needs the wheel's bundled libraries and this Python's ``libpython`` on
``LD_LIBRARY_PATH``, and a backend directory whose ``python/`` holds the backend plus the stub that
matches the running interpreter; :func:`find_triton` finds all of it, :class:`LocalTriton` runs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from packer.errors import UserError

INSTALL_FIX = "install it with `pip install -e .[serving]` (the nvidia-pytriton wheel carries tritonserver)"


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend: Path
    """The wheel's ``backends/python`` (libtriton_python.so, triton_python_backend_utils.py)."""
    stub: Path
    """``triton_python_backend_stub`` built for this Python version."""
    lib_dirs: tuple[Path, ...]


def find_triton() -> TritonInstall:
    """Locate the server pieces inside the installed ``pytriton`` package, or say how to get them."""
    try:
        import pytriton
    except ImportError:
        raise UserError(f"nvidia-pytriton is not installed; {INSTALL_FIX}") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / ver / "triton_python_backend_stub",
        lib_dirs=tuple(p for p in (Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs",
                                   Path(sysconfig.get_config_var("LIBDIR") or "")) if p.is_dir()),
    )
    for what, p in (("server binary", install.binary), ("python backend", install.backend / "libtriton_python.so"),
                    (f"python {ver} backend stub", install.stub)):
        if not p.exists():
            raise UserError(f"the Triton {what} is missing at {p}; {INSTALL_FIX} for Python {ver}")
    return install


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports. The sockets are held open together while the kernel picks,
    because ports probed one after another may come back equal, and tritonserver refuses to start
    (it prints its usage) when two of its endpoints share a port."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int


class LocalTriton:
    """Start ``tritonserver`` on ``repository`` and stop it cleanly (a context manager).

    ``repository`` may be several directories (a slot's streaming and batch repositories): one
    server loads them all (``--model-repository`` repeated), so its rate limiter makes the slot's
    members take turns across both workload classes, as on the GPU. ``explicit``: ``--model-control-mode=explicit``; ``load`` names the models loaded at start
    (``["*"]``: all). Without explicit mode every model of the repository loads at start.
    The rate limiter is on (``--rate-limit=execution_count``) so packed models take turns as the
    writer configured.
    """

    def __init__(self, repository: Path | Sequence[Path], *, explicit: bool = True, load: list[str] | None = ("*",),
                 log_path: Path | None = None, start_timeout_s: float = 120.0, exit_timeout_s: int = 5,
                 extra_args: tuple[str, ...] = ()) -> None:
        paths = [repository] if isinstance(repository, (str, os.PathLike)) else list(repository)
        self.repositories = [Path(p).resolve() for p in paths]
        self.repository = self.repositories[0]
        self.explicit = explicit
        self.load = list(load or [])
        self.start_timeout_s = start_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = tuple(extra_args)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.ports: Ports | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self._ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self._ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._ports.metrics}/metrics"

    @property
    def _ports(self) -> Ports:
        if self.ports is None:
            raise RuntimeError("the server is not started")
        return self.ports

    # -- lifecycle -------------------------------------------------------------------------
    def _backend_dir(self, install: TritonInstall, tmp: Path) -> Path:
        py = tmp / "backends" / "python"
        py.mkdir(parents=True)
        for f in install.backend.iterdir():
            if f.is_file():
                os.symlink(f, py / f.name)
        os.symlink(install.stub, py / "triton_python_backend_stub")
        return py.parent

    def command(self, install: TritonInstall, backends: Path) -> list[str]:
        p = self._ports
        args = [str(install.binary), *(f"--model-repository={r}" for r in self.repositories),
                f"--backend-directory={backends}",
                f"--http-address=127.0.0.1", f"--http-port={p.http}", f"--grpc-address=127.0.0.1",
                f"--grpc-port={p.grpc}", f"--metrics-address=127.0.0.1", f"--metrics-port={p.metrics}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", "--metrics-interval-ms=500",
                "--rate-limit=execution_count", f"--exit-timeout-secs={self.exit_timeout_s}",
                "--log-verbose=0"]
        if self.explicit:
            args.append("--model-control-mode=explicit")
            args += [f"--load-model={m}" for m in self.load]
        return args + list(self.extra_args)

    def start(self) -> "LocalTriton":
        install = find_triton()
        self._tmp = tempfile.TemporaryDirectory(prefix="packer-triton-")
        tmp = Path(self._tmp.name)
        backends = self._backend_dir(install, tmp)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(p) for p in install.lib_dirs] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
        self.log_path = self.log_path or tmp / "tritonserver.log"
        last = ""
        for _attempt in range(3):  # a port taken between probe and bind: retry on fresh ports
            self.ports = Ports(*free_ports(3))
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(self.command(install, backends), stdout=log, stderr=subprocess.STDOUT,
                                             env=env, start_new_session=True,
                                             preexec_fn=_die_with_parent)
            try:
                self._wait_ready()
                return self
            except _Exited as e:
                last = str(e)
                if "address already in use" not in last.lower():
                    break
        self.stop()
        raise UserError(f"tritonserver did not start:\n{last}\nFix: read the log above; a model that fails to load "
                        "names its config error there")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _Exited(self.failure())
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise _Exited(f"not ready after {self.start_timeout_s:.0f} s\n" + self.failure())

    def failure(self) -> str:
        """The lines of the log that say why: errors and models that did not load, else its tail."""
        text = self.log_tail(1 << 20)
        keep = [ln for ln in text.splitlines()
                if re.match(r"^E\d{4} ", ln) or "UNAVAILABLE" in ln or ln.startswith("error:")]
        keep = [ln for ln in keep if "CudaDriverHelper" not in ln]  # CPU-only machines: expected
        keep = [re.sub(r"\s{2,}", " ", ln).strip(" |") for ln in keep]
        if keep:
            return "\n".join(keep)[-6000:]
        if "Usage: tritonserver" in text:  # a refused command line: the reason is above the usage text
            return text.split("Usage: tritonserver", 1)[0].strip()[-4000:]
        return text[-4000:]

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-chars:]
        except (OSError, TypeError):
            return ""

    def stop(self) -> int | None:
        """SIGTERM (Triton finishes in-flight requests up to its exit timeout), then SIGKILL."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(self.exit_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            rc = self.proc.returncode
            self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return rc

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class _Exited(Exception):
    pass


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends SIGTERM if the Python process that started the server
    dies (even by SIGKILL), so a crashed test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
