"""The workflow and library stay lint-clean: snakemake --lint, snakefmt, ruff."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize("extra", [(), ("--configfile", "config/finetune_rings.yaml")], ids=["default", "finetune"])
def test_snakemake_lint_is_clean(extra):
    result = _run(sys.executable, "-m", "snakemake", "--lint", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "good condition" in result.stdout + result.stderr


@pytest.mark.parametrize(("tool", "args"), [("snakefmt", ("--check", "workflow")), ("ruff", ("check", "zoobot_core", "tests", "workflow/scripts"))])
def test_formatters_and_linters_are_clean(tool, args):
    exe = BIN / tool if (BIN / tool).exists() else shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} is not installed (it comes with the project's test extras: pip install -e '.[cpu,test]')")
    result = _run(str(exe), *args)
    assert result.returncode == 0, result.stdout + result.stderr
