"""The program of a `runtime: command` function: started as the worker's child, watched, its
end reported.

A command function is a standard program (a broker such as nats-server or Mosquitto) run as a
long-lived service. By the time it starts, the worker has applied the instance's rlimits,
dropped to its uid and replaced its environment; the program inherits all of that and the
worker's stdout and stderr, which are the function's log. When the program ends, the worker
reports how (an ``Exited`` frame) and exits too: an instance lives exactly as long as its
program, and the node decides about a restart.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence

PR_SET_PDEATHSIG = 1
# $(NAME) is replaced by the instance's environment variable NAME (unknown names stay as
# written); $$( escapes it. The same rule as Kubernetes' command and args.
_REFERENCE = re.compile(r"\$(\$(?=\()|\((\w+)\))")


class ProgramError(Exception):
    """The program cannot be started; the message names it."""


def expand(arg: str, env: Mapping[str, str]) -> str:
    """``arg`` with ``$(NAME)`` references to ``env`` replaced (e.g. ``$(NFAAS_ADDRESS)``)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        return env.get(match.group(2), match.group(0))

    return _REFERENCE.sub(replace, arg)


def resolve(program: str, cwd: str, path: str) -> str:
    """The file to execute for ``program``: a name is looked up on ``path``, a path with a
    slash is taken relative to ``cwd`` (the function's code)."""
    if "/" in program:
        full = os.path.join(cwd, program)
        if not os.path.isfile(full):
            where = "" if os.path.isabs(program) else " in the function's code directory"
            raise ProgramError(f"program {program!r} not found{where}")
    else:
        found = shutil.which(program, path=path)
        if found is None:
            raise ProgramError(f"program {program!r} not found on PATH ({path})")
        full = found
    if not os.access(full, os.X_OK):
        raise ProgramError(f"program {program!r} ({full}) is not executable by the instance's uid")
    return full


def describe_status(status: int) -> str:
    """``status`` as ``os.waitstatus_to_exitcode`` gives it, in words."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def _in_child(memory: int) -> Callable[[], None]:
    """What the child does between fork and exec: die with the worker, and (process tier)
    bound its own data to the function's memory limit, not the worker's larger one."""
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if memory:
            resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    return setup


class Program:
    """One run of the function's program."""

    def __init__(self, argv: Sequence[str], cwd: str, env: Mapping[str, str], memory: int) -> None:
        if not argv:
            raise ProgramError("runtime command needs a program to run")
        self.argv = [expand(arg, env) for arg in argv]
        self.executable = resolve(self.argv[0], cwd, env.get("PATH", os.defpath))
        try:
            self._process = subprocess.Popen(
                self.argv,
                executable=self.executable,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,  # stdout and stderr: the worker's, the function's log
                preexec_fn=_in_child(memory),
            )
        except OSError as exc:
            raise ProgramError(f"cannot start program {self.argv[0]!r}: {exc}") from None
        self.pid = self._process.pid

    def watch(self, on_exit: Callable[[int, str], None]) -> None:
        """Call ``on_exit(status, words)`` from a thread once the program has ended.

        Reaps every child meanwhile: in a container the worker is PID 1, and the program's
        orphans come to it."""

        def wait() -> None:
            status = 0
            while True:
                try:
                    pid, raw = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                if pid == self.pid:
                    status = os.waitstatus_to_exitcode(raw)
                    break
            on_exit(status, describe_status(status))

        threading.Thread(target=wait, name="program", daemon=True).start()
