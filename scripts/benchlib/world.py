"""The reference world on a fresh machine of this kind: Debian's packages,
a running Docker engine, local registries on loopback, the busybox base in
every tool's store, and rbuild built from this repository."""
import datetime
import os
import platform
import shutil
import subprocess
import time
import urllib.error
import urllib.request

from .common import REPO, BenchError, clean_env, free_port, log, run, stop_process, tail
from .tools import DOCKER

# command -> the Debian package that has it
PACKAGES = {
    "docker": "docker.io",
    "dockerd": "docker.io",
    "buildah": "buildah",
    "runc": "runc",
    "skopeo": "skopeo",
    "docker-registry": "docker-registry",
    "busybox": "busybox-static",
    "/usr/bin/time": "time",
    "gzip": "gzip",
    "git": "git",
}


def ensure_packages():
    """Installs what is missing with apt-get (root, Debian)."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if not shutil.which(cmd)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"missing packages: {' '.join(missing)} (apt-get install -y {' '.join(missing)})")
    log(f"installing {' '.join(missing)}")
    env = clean_env(DEBIAN_FRONTEND="noninteractive")
    env.update({k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")})  # apt may need them
    run(["apt-get", "update", "-q"], "apt-get update", env=env)
    run(["apt-get", "install", "-y", "-q"] + missing, "apt-get install", env=env)
    still = sorted({pkg for cmd, pkg in PACKAGES.items() if not shutil.which(cmd)})
    if still:
        raise BenchError(f"still missing after apt-get: {' '.join(still)}")


class Engine:
    """The Docker engine: the one running, or one started here (and stopped at the end)."""

    def __init__(self, work):
        self.work = work
        self.proc = None

    def answers(self):
        return subprocess.run([DOCKER, "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def ensure(self):
        if self.answers():
            return
        logfile = os.path.join(self.work, "dockerd.log")
        log(f"starting dockerd (log: {logfile})")
        with open(logfile, "wb") as out:
            self.proc = subprocess.Popen(["dockerd", "--iptables=false", "--bridge=none"], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"dockerd did not come up:\n{tail(logfile)}")
            time.sleep(0.5)

    def stop(self):
        stop_process(self.proc, 30)


class Registry:
    """Debian's docker-registry on 127.0.0.1, storage in the work directory."""

    def __init__(self, work, name):
        self.port = free_port()
        self.dir = os.path.join(work, f"registry-{name}")
        self.log = os.path.join(work, f"registry-{name}.log")
        self.proc = None
        os.makedirs(self.dir)
        self.config = os.path.join(self.dir, "config.yml")
        with open(self.config, "w") as f:
            f.write(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {self.dir}/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
""")

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["docker-registry", "serve", self.config], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"docker-registry exited at start:\n{tail(self.log)}")
            try:
                with opener.open(f"http://{self.host}/v2/", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise BenchError(f"docker-registry does not answer on {self.host}:\n{tail(self.log)}")
                time.sleep(0.05)

    def stop(self):
        stop_process(self.proc, 10)


def build_rbuild():
    """Path of the release binary: RBUILD, or built here with cargo."""
    given = os.environ.get("RBUILD")
    if given:
        path = os.path.abspath(given)
    else:
        log("cargo build --release")
        if subprocess.run(["cargo", "build", "--release", "-q"], cwd=REPO).returncode != 0:
            raise BenchError("cargo build --release failed (RBUILD=PATH uses a binary built elsewhere)")
        target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
        path = os.path.join(os.path.abspath(os.path.join(REPO, target)), "release", "rbuild")
    if not os.access(path, os.X_OK):
        raise BenchError(f"no rbuild binary at {path}")
    return path


def base_image(work):
    """testdata/make-busybox.sh's image (docker.io/library/busybox:latest),
    loaded into docker and buildah's store; rbuild loads it into each new root."""
    layout = os.path.join(work, "busybox")
    run([os.path.join(REPO, "testdata", "make-busybox.sh"), layout], "testdata/make-busybox.sh")
    tar = subprocess.Popen(["tar", "-C", layout, "-c", "."], stdout=subprocess.PIPE)
    run([DOCKER, "load"], "docker load (busybox)", stdin=tar.stdout)
    tar.stdout.close()
    if tar.wait() != 0:
        raise BenchError("tar of the busybox image failed")
    run(["skopeo", "copy", "-q", "--insecure-policy", f"oci:{layout}",
         "containers-storage:docker.io/library/busybox:latest"], "skopeo copy busybox to buildah's store")
    return layout


def machine(tools, rbuild):
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    git = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout.decode().strip()
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", "/var/tmp"], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL).stdout.decode().strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "filesystem": fs or "?",
        "tools": {t.name: t.version() for t in tools},
        "rbuild_commit": git or "?",
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
