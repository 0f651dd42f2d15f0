"""Small things every part of the suite uses: logging, the error type,
running unmeasured commands."""
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# BENCHES_DIR points the suite at other workloads (the tests use it).
BENCHES = os.environ.get("BENCHES_DIR") or os.path.join(REPO, "benches")
STARTED = time.monotonic()

# Proxy variables would send the tools' loopback registry traffic elsewhere.
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


class BenchError(Exception):
    """Something failed or gave a wrong result: no timing is reported then."""


def log(msg):
    print(f"bench: [{time.monotonic() - STARTED:5.0f} s] {msg}", file=sys.stderr, flush=True)


def clean_env(**extra):
    """The environment the tools run in: no proxies, no rbuild config from the caller."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in PROXY_VARS and k not in ("RBUILD_CONFIG", "RBUILD_ROOT")}
    env.update(extra)
    return env


def run(cmd, what=None, env=None, stdin=None, capture=False, cwd=None):
    """Runs an unmeasured command; raises BenchError with its output when it fails.
    Returns stdout (bytes) when capture, else nothing useful."""
    p = subprocess.run(cmd, env=env or clean_env(), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture else subprocess.STDOUT, cwd=cwd)
    if p.returncode != 0:
        err = (p.stderr if capture else p.stdout) or b""
        raise BenchError(f"{what or cmd[0]} failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n"
                         + err.decode(errors="replace")[-3000:])
    return p.stdout


def quiet(cmd, env=None):
    """Runs a cleanup command whose failure does not matter (e.g. removing what may not exist)."""
    subprocess.run(cmd, env=env or clean_env(), stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=4000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


def stop_process(proc, grace):
    """Stops a service we started: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
