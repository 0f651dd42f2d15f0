"""Timing a step: wall time from the first command's start to the last
one's exit, each command's peak resident set (GNU time), and for docker the
daemon's growth while the step runs (BuildKit lives inside dockerd)."""
import contextlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .common import BenchError, clean_env

GNU_TIME = "/usr/bin/time"


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
    def __init__(self, logdir, dockerd):
        self.logdir = logdir
        self.n = 0
        self.have_time = os.access(GNU_TIME, os.X_OK) and subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", "/dev/null", "true"]).returncode == 0
        self.dockerd = dockerd  # the engine's PID, for its growth during docker's steps

    def measure(self, cmds, what, sample_daemon=False, env=None):
        """Runs the commands one after the other, timed together. Raises
        BenchError (with the failing command's output) when one fails."""
        # Every command's log is open before the clock starts. GNU time
        # stays in front of each command: a child of this (large) Python
        # process would report Python's resident set as its own peak.
        runs = []
        for cmd in cmds:
            self.n += 1
            logfile = os.path.join(self.logdir, f"{self.n:04d}.log")
            rssfile = logfile[:-4] + ".rss"
            out = open(logfile, "wb")
            out.write((" ".join(cmd) + "\n").encode())
            out.flush()
            full = [GNU_TIME, "-f", "%M", "-o", rssfile] + cmd if self.have_time else cmd
            runs.append((cmd, full, logfile, rssfile, out))
        env = env or clean_env()
        os.sync()  # nothing an earlier step wrote is still on its way to the disk
        peak = None
        sampler = DaemonSampler(self.dockerd) if (sample_daemon and self.dockerd) else None
        try:
            with sampler or contextlib.nullcontext():
                t0 = time.perf_counter()
                for cmd, full, logfile, rssfile, out in runs:
                    p = subprocess.run(full, env=env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT)
                    if p.returncode != 0:
                        out.close()
                        with open(logfile, "rb") as f:
                            log_tail = f.read()[-4000:].decode(errors="replace")
                        raise BenchError(f"{what}: exit {p.returncode}: {' '.join(cmd)}\n{log_tail}")
                    if self.have_time:
                        with open(rssfile) as f:
                            words = f.read().split()
                        if words and words[-1].isdigit():
                            peak = max(peak or 0, int(words[-1]))
                t1 = time.perf_counter()
        finally:
            for *_, out in runs:
                out.close()
        return Sample(t1 - t0, peak, sampler.growth() if sampler else None)
