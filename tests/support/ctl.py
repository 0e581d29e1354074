"""scepproxyctl, the one way tests run it: in process (``main()``) or as the installed command."""

import io
import json
import subprocess
import sys

from scepproxyd.cli import main

from support.processes import BIN

CTL = str(BIN / "scepproxyctl")


def ctl_in_process(*argv, stdin: str = "") -> tuple[int, str, str]:
    """``main()`` with captured streams: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def run_ctl(config, *argv, input: str | None = "", timeout: float = 60, module: bool = False,
            cwd=None, ctl=CTL) -> subprocess.CompletedProcess:
    """The installed ``scepproxyctl --config CONFIG ...`` (``ctl``: another install's; ``module``:
    ``python -m scepproxyd.cli``) in ``cwd``, text output captured."""
    command = [sys.executable, "-m", "scepproxyd.cli"] if module else [str(ctl)]
    return subprocess.run(command + ["--config", str(config), *argv], input=input,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


class Ctl:
    """Runs scepproxyctl against one daemon's config, checks its exit code and keeps everything it printed."""

    def __init__(self, config, timeout: float = 60):
        self.config = str(config)
        self.timeout = timeout
        self.printed: list[str] = []

    def __call__(self, *argv, input: str | None = None, expect: int = 0, module: bool = False):
        result = run_ctl(self.config, *argv, input=input if input is not None else "", timeout=self.timeout, module=module)
        self.printed += [result.stdout, result.stderr]
        assert result.returncode == expect, (argv, result.returncode, result.stdout, result.stderr)
        return result

    def json(self, *argv, **kwargs):
        return json.loads(self("--json", *argv, **kwargs).stdout)
