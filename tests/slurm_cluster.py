"""A real one-node SLURM cluster on localhost for the tests: munged + slurmctld + slurmd, one fake GPU.

Needs root and Debian's slurm-wlm and munge (`make system-deps`). Everything the cluster writes
(config, state, spool, logs, pid files) lives in one temporary folder; the daemons started here are
stopped by their pids on exit, and daemons that were already running are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

DAEMONS = ("munged", "slurmctld", "slurmd")
# The SLURM executor's job step drops SLURM_CONF before its inner `srun`, so inside a job only the
# default location works: the test cluster's config goes there while it runs, then is removed.
SYSTEM_CONF = Path("/etc/slurm")


def missing_requirements() -> str | None:
    """Why a local SLURM cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs jobs as their users)"
    absent = [name for name in (*DAEMONS, "sbatch", "squeue", "sinfo") if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing): run `make system-deps` (Debian, root)"
    if not Path("/etc/munge/munge.key").exists():
        return "munge has no key (/etc/munge/munge.key): reinstall munge"
    existing = [p for p in (SYSTEM_CONF / "slurm.conf", SYSTEM_CONF / "gres.conf") if p.exists()]
    if existing:
        return f"{existing[0]} exists (a real SLURM set-up here?); the test cluster will not replace it"
    return None


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def write_config(folder: Path, cpus: int, memory_mb: int) -> Path:
    """slurm.conf and gres.conf for one node (this host) with `cpus`, `memory_mb` and one fake GPU."""
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        "\n".join([
            "ClusterName=zoobot-test",
            f"SlurmctldHost={node}",
            "SlurmUser=root",
            "SlurmctldPort=16817",
            "SlurmdPort=16818",
            "AuthType=auth/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "GresTypes=gpu",
            "ReturnToService=2",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
            f"DefMemPerCPU={memory_mb // cpus}",
            f"NodeName={node} CPUs={cpus} RealMemory={memory_mb} Gres=gpu:1 State=UNKNOWN",
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])
    )
    (folder / "gres.conf").write_text(f"AutoDetect=off\nNodeName={node} Name=gpu File=/dev/null\n")
    return conf


@contextmanager
def _installed(conf: Path) -> Iterator[Path]:
    """slurm.conf and gres.conf copied to /etc/slurm for as long as the cluster runs."""
    SYSTEM_CONF.mkdir(parents=True, exist_ok=True)
    targets = [SYSTEM_CONF / "slurm.conf", SYSTEM_CONF / "gres.conf"]
    try:
        for target in targets:
            shutil.copyfile(conf.parent / target.name, target)
        yield targets[0]
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie left for a non-reaping init counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise RuntimeError(f"Local SLURM: {what} did not happen within {timeout:.0f} s\n{tails}")


def _munge_works() -> bool:
    encoded = subprocess.run(["munge", "-n"], capture_output=True)
    return encoded.returncode == 0 and subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True).returncode == 0


def _node_idle(env: dict[str, str]) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env)
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mix")


def _start_daemons(folder: Path, conf: Path, env: dict[str, str], stack: contextlib.ExitStack) -> None:
    """munged (unless one answers already), slurmctld and slurmd; each one's stop is pushed on `stack`."""
    if not _munge_works():
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        stack.callback(_stop, "munged", Path("/run/munge/munged.pid"))
        _wait(_munge_works, 20, "munged answering", [])
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([f"/usr/sbin/{daemon}", "-f", str(conf)], check=True, env=env)
        stack.callback(_stop, daemon, folder / f"{daemon}.pid")


def _stop(name: str, pid_file: Path) -> None:
    """SIGTERM the daemon whose pid the file holds; SIGKILL if it is still up after 15 s."""
    pid = _pid(pid_file)
    if pid is None:
        log.warning("No pid file %s for %s: not stopped", pid_file, name)
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


@contextmanager
def local_slurm(folder: Path, cpus: int | None = None, memory_mb: int | None = None) -> Iterator[dict[str, str]]:
    """Start munged (if none answers), slurmctld and slurmd; yield the environment for SLURM clients.

    On exit: leftover jobs cancelled, the daemons started here stopped (newest first), the
    config removed from /etc/slurm.
    """
    reason = missing_requirements()
    if reason:
        raise RuntimeError(f"Cannot start a local SLURM: {reason}")
    cpus = cpus or os.cpu_count() or 1
    memory_mb = memory_mb or int(_memory_mb() * 0.8)
    with contextlib.ExitStack() as stack:
        conf = stack.enter_context(_installed(write_config(folder, cpus, memory_mb)))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        _start_daemons(folder, conf, env, stack)
        stack.callback(subprocess.run, ["scancel", "--full", "--user", "root"], env=env, capture_output=True)
        _wait(lambda: _node_idle(env), 60, "the node becoming idle", [folder / "log" / "slurmctld.log", folder / "log" / "slurmd.log"])
        log.info("Local SLURM up: %s (%d CPUs, %d MB, 1 fake GPU)", conf, cpus, memory_mb)
        yield env
