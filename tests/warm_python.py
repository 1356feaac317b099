"""Real `python -m shardlab` processes without paying the interpreter's start-up each time.

A fresh interpreter spends most of its first seconds importing torch and Lightning (5-10 s of CPU on
a 2-core machine, more than the tiny command it then runs). :class:`WarmPython` starts one server
interpreter that imports them once and forks a child per command: the child is a separate process
with its own pid, environment, working directory, argv, stdout and stderr files and exit status,
that imports shardlab itself and exits as ``python -m shardlab`` does (SystemExit through the
interpreter's own shutdown, or death by a signal). Tests send it signals with :func:`os.kill`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional, Sequence

# The server reads one JSON request per line and answers one JSON line. Only it can reap its
# children, so it also answers poll and wait. Nothing before the fork touches torch's thread pools.
SERVER = r"""
import gc, importlib, json, os, runpy, sys, time
for name in sys.argv[1:]:  # the start-up the children skip
    if name == "procgen-assets":  # procgen loads its images on its first env (~2 s); no worker threads
        from procgen import ProcgenGym3Env
        ProcgenGym3Env(num=1, env_name="maze", num_threads=0).close()
    else:
        importlib.import_module(name)

def reap(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)

for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "start":
        sys.stdout.flush()
        sys.stderr.flush()
        # the preloaded objects out of the collector's reach, as the gc docs advise before a fork: the
        # child's collections (and its shutdown's) would otherwise walk them all, copying every page
        # of the parent's heap they sit on (about 1 s of CPU per child with torch and Lightning)
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            sys.argv = list(request["argv"])
            if request["code"] is not None:
                exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
            else:
                sys.path.insert(0, request["cwd"])
                runpy.run_module("shardlab", run_name="__main__", alter_sys=True)
            sys.exit(0)
        answer = {"pid": pid}
    else:
        answer = {"code": reap(request["pid"], request["timeout"])}
    print(json.dumps(answer), flush=True)
"""


class WarmProcess:
    """One forked command: a small part of :class:`subprocess.Popen`'s interface."""

    def __init__(self, server: "WarmPython", pid: int, stdout: str, stderr: str):
        self._server, self.pid, self._stdout, self._stderr = server, pid, stdout, stderr
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        """The exit status if the process has exited, else None."""
        return self.wait(0.0) if self.returncode is None else self.returncode

    def wait(self, timeout: float = 600.0) -> Optional[int]:
        """Wait up to ``timeout`` seconds for the exit status (None if still running)."""
        if self.returncode is None:
            self.returncode = self._server._ask({"op": "wait", "pid": self.pid, "timeout": timeout})["code"]
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process."""
        self.send_signal(9)

    @property
    def stdout(self) -> str:
        """What the process wrote to its stdout so far."""
        return open(self._stdout, encoding="utf-8", errors="replace").read()

    @property
    def stderr(self) -> str:
        """What the process wrote to its stderr so far."""
        return open(self._stderr, encoding="utf-8", errors="replace").read()


class WarmPython:
    """A server interpreter that has imported ``preload`` (by default torch and Lightning, and procgen
    with its images loaded; nothing of shardlab) and forks ``python -m shardlab`` runs or ``python -c``
    programs."""

    def __init__(self, folder: str, preload: Sequence[str] = ("torch", "pytorch_lightning", "procgen-assets")):
        self._folder, self._count = folder, 0
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self._server = subprocess.Popen([sys.executable, "-c", SERVER, *preload], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, text=True, bufsize=1)

    def _ask(self, request: dict) -> dict:
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        line = self._server.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm python server exited ({self._server.poll()})")
        return json.loads(line)

    def start(self, argv: Sequence[str], cwd: str, env: Optional[dict] = None, code: Optional[str] = None) -> WarmProcess:
        """Fork ``python -m shardlab ARGV`` (or ``python -c CODE ARGV`` given ``code``) in ``cwd`` with
        environment ``env`` (default: this process's)."""
        self._count += 1
        out = os.path.join(self._folder, f"{self._count}.out")
        err = os.path.join(self._folder, f"{self._count}.err")
        argv = ["-c" if code is not None else "shardlab", *argv]
        answer = self._ask({"op": "start", "argv": argv, "cwd": str(cwd), "env": dict(os.environ if env is None else env),
                            "stdout": out, "stderr": err, "code": code})
        return WarmProcess(self, answer["pid"], out, err)

    def run(self, argv: Sequence[str], cwd: str, env: Optional[dict] = None, timeout: float = 600.0,
            code: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run a command to its end: its exit status, stdout and stderr."""
        process = self.start(argv, cwd, env, code)
        if process.wait(timeout) is None:
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(argv, timeout)
        return subprocess.CompletedProcess(argv, process.returncode, process.stdout, process.stderr)

    def run_script(self, script: str, args: Sequence[str], cwd: str, env: Optional[dict] = None,
                   timeout: float = 600.0) -> subprocess.CompletedProcess:
        """Run ``python SCRIPT ARGS`` to its end: the script as ``__main__`` with its own argv and its
        folder first on sys.path, as the interpreter runs a script file."""
        code = ("import os, runpy, sys\nsys.argv = sys.argv[1:]\n"
                "sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))\n"
                "runpy.run_path(sys.argv[0], run_name='__main__')\n")
        return self.run([script, *args], cwd, env, timeout, code=code)

    def close(self) -> None:
        """Stop the server (its stdin closes, its loop ends)."""
        self._server.stdin.close()
        self._server.wait(timeout=60)

