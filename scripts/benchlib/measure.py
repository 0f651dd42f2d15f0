"""Timing a step: each command's wall time from its spawn to its reaping,
summed over the step's commands, and its peak resident set (both measured
by `timed`, timed.rs, which runs the command); for docker also the
daemon's growth while the step runs (BuildKit lives inside dockerd)."""
import contextlib
import os
import subprocess
import threading
from dataclasses import dataclass
from typing import Optional

from .common import REPO, BenchError, clean_env, log

TIMED_SOURCE = os.path.join(REPO, "scripts", "benchlib", "timed.rs")


def build_timed(directory):
    """Compiles the stopwatch (timed.rs) into `directory`; returns its path."""
    path = os.path.join(directory, "timed")
    log("rustc timed.rs")
    p = subprocess.run(["rustc", "--edition", "2021", "-O", "-o", path, TIMED_SOURCE],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise BenchError(f"rustc {TIMED_SOURCE} failed:\n{p.stdout.decode(errors='replace')}")
    return path


@dataclass
class Sample:
    seconds: float
    rss_kb: Optional[int]  # the largest process of the step (the tool, or one of its children)
    daemon_kb: Optional[int] = None  # dockerd's growth over its size before the step


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class DaemonSampler:
    """Samples a process's resident set every 10 ms."""

    def __init__(self, pid):
        self.pid, self.base, self.peak = pid, rss_kb(pid), 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pid) or 0)
            self.stop.wait(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def growth(self):
        if self.base is None or not self.peak:
            return None
        return max(0, self.peak - self.base)


class Meter:
    def __init__(self, logdir, dockerd, timed):
        self.logdir = logdir
        self.n = 0
        self.timed = timed  # build_timed's stopwatch
        self.dockerd = dockerd  # the engine's PID, for its growth during docker's steps

    def measure(self, cmds, what, sample_daemon=False, env=None):
        """Runs the commands one after the other, timed together. Raises
        BenchError (with the failing command's output) when one fails."""
        # Every command's log is open before it starts. The stopwatch
        # spawns each command: this harness's own spawning is not timed,
        # and a child of this (large) Python process would report Python's
        # resident set as its own peak.
        runs = []
        for cmd in cmds:
            self.n += 1
            logfile = os.path.join(self.logdir, f"{self.n:04d}.log")
            timefile = logfile[:-4] + ".time"
            out = open(logfile, "wb")
            out.write((" ".join(cmd) + "\n").encode())
            out.flush()
            runs.append((cmd, [self.timed, timefile] + cmd, logfile, timefile, out))
        env = env or clean_env()
        os.sync()  # nothing an earlier step wrote is still on its way to the disk
        seconds, peak = 0.0, None
        sampler = DaemonSampler(self.dockerd) if (sample_daemon and self.dockerd) else None
        try:
            with sampler or contextlib.nullcontext():
                for cmd, full, logfile, timefile, out in runs:
                    p = subprocess.run(full, env=env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT)
                    if p.returncode != 0:
                        out.close()
                        with open(logfile, "rb") as f:
                            log_tail = f.read()[-4000:].decode(errors="replace")
                        raise BenchError(f"{what}: exit {p.returncode}: {' '.join(cmd)}\n{log_tail}")
                    took, rss = read_timed(timefile, what)
                    seconds += took
                    peak = max(peak or 0, rss)
        finally:
            for *_, out in runs:
                out.close()
        return Sample(seconds, peak, sampler.growth() if sampler else None)


def read_timed(path, what):
    """The stopwatch's `SECONDS MAXRSS_KB` line."""
    try:
        with open(path) as f:
            seconds, rss = f.read().split()
        return float(seconds), int(rss)
    except (OSError, ValueError) as e:
        raise BenchError(f"{what}: no time from the stopwatch ({path}): {e}")
