"""A real one-machine Slurm cluster in a directory, for the tests and the benchmark.

munged (its own key and socket), slurmctld and slurmd from Debian's ``slurm-wlm`` and
``munge`` packages, configured in a temporary directory: this host is the cluster's one
node (with ``cpus`` virtual CPUs: ``SlurmdParameters=config_overrides`` lets it claim
more than it has), ``proctrack/linuxproc`` and ``task/none`` (no cgroups: they are not
delegated inside a container), ``select/cons_tres`` so that allocations share the node,
and ``sched/builtin`` so that a job starts as soon as it is submitted. Runs as root
(``SlurmUser=root``). Clients find the cluster through ``SLURM_CONF`` (:attr:`env`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


class SlurmUnavailable(RuntimeError):
    """Why a one-machine Slurm cannot run here (the tests skip with it)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (os.path.join(d, name) for d in SBIN if os.access(os.path.join(d, name), os.X_OK)),
        None,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable_reason() -> str | None:
    """None when a cluster can be started here; else why not (what to install or change)."""
    missing = [n for n in (*DAEMONS, "sbatch", "squeue", "scancel", "srun") if not _which(n)]
    if missing:
        return (
            f"Slurm is not installed ({', '.join(missing)} missing): "
            f"apt-get install slurm-wlm munge (scripts/test does)"
        )
    if os.geteuid() != 0:
        return "the one-machine Slurm runs its daemons as root (SlurmUser=root); run as root"
    return None


class SlurmCluster:
    def __init__(self, root: Path, *, cpus: int = 8, kill_wait_s: int = 30):
        self.root = root
        self.cpus = cpus
        self.kill_wait_s = kill_wait_s
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm client (sbatch, squeue, scancel) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def bin_dir(self) -> str:
        return os.path.dirname(_which("sbatch") or "/usr/bin/sbatch")

    def _write(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=adaptrain-test",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "SwitchType=switch/none",
                    "MpiDefault=none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/builtin",
                    "SlurmdParameters=config_overrides",
                    "ReturnToService=2",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    "InactiveLimit=0",
                    "MinJobAge=300",
                    f"KillWait={self.kill_wait_s}",
                    "Waittime=0",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.processes[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()

    def start(self, *, timeout_s: float = 60.0) -> None:
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        self._write()
        m = self.root / "munge"
        self._start(
            "munged",
            [
                _which("munged") or "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged to listen")
        self._start("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-f", str(self.conf)])
        self._wait(self._controller_answers, timeout_s, "slurmctld to answer")
        self._start(
            "slurmd", [_which("slurmd") or "slurmd", "-D", "-f", str(self.conf), "-N", self.node]
        )
        self._wait(self._node_idle, timeout_s, f"node {self.node} to be idle")

    def _client(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=30,
            check=False,
        )

    def _controller_answers(self) -> bool:
        return self._client("scontrol", "ping").returncode == 0

    def _node_idle(self) -> bool:
        done = self._client("sinfo", "-h", "-N", "-o", "%T")
        return done.returncode == 0 and done.stdout.strip().startswith(("idle", "mixed"))

    def _wait(self, ok, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(
                        f"{name} exited with {proc.returncode} while waiting for {what}: "
                        f"{self.log_tail(name)}"
                    )
            if ok():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(
            f"timed out waiting for {what}: slurmctld: {self.log_tail('slurmctld')} "
            f"slurmd: {self.log_tail('slurmd')}"
        )

    def log_tail(self, name: str, lines: int = 15) -> str:
        texts = []
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out"):
            if path.exists():
                texts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts) or "(no log)"

    def queue(self) -> dict[str, str]:
        """squeue's jobs: {job id: state}."""
        done = self._client("squeue", "-h", "-o", "%i %T")
        return dict(line.split(None, 1) for line in done.stdout.splitlines() if line.strip())

    def stop(self) -> None:
        # Jobs first, so that their agents and workers do not outlive the cluster.
        self._client("scancel", "--full", "--signal=KILL", "--user=root")
        self._client("scancel", "--user=root")
        # Until slurmd has ended the steps: stopped earlier, it leaves slurmstepd behind.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.processes.get("slurmctld") is not None:
            if self.processes["slurmctld"].poll() is not None or not self.queue():
                break
            time.sleep(0.2)
        for name in reversed(DAEMONS):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
