"""The reference world on a fresh machine of this kind: Debian's packages,
a running Docker engine, local registries on loopback, the busybox base in
every tool's store, and rbuild built from this repository."""
import datetime
import os
import platform
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from .common import REPO, BenchError, clean_env, free_port, log, quiet, run, stop_process, tail
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
    "mkfs.ext4": "e2fsprogs",
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


class WorkFs:
    """A fresh ext4 filesystem (journaled, as mkfs.ext4 makes it) in a
    sparse file, loop-mounted: every tool's store, the contexts and the
    exports live on it, so all tools meet the same disk in the same state.

    Why not the machine's own filesystem: on an ext4 without a journal
    (this VM's root is one) the inode allocator examines recently deleted
    inodes one by one, and after one cold build's cleanup creating 20,000
    files took 5 to 14 s instead of 0.5 s, for long after, for every tool.
    Deletions are discarded into the sparse file, so it holds only what
    is in use."""

    def __init__(self, outer, size_gib):
        self.image = os.path.join(outer, "fs.img")
        self.path = os.path.join(outer, "fs")
        self.size = size_gib << 30
        self.device = None
        self.mounted = False

    def mount(self):
        for cmd in ("mkfs.ext4", "losetup", "mount", "umount"):
            if not shutil.which(cmd):
                raise BenchError(f"no {cmd} for the work filesystem (e2fsprogs, mount); --host-fs runs without it")
        os.makedirs(self.path)
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        run(["mkfs.ext4", "-q", "-F", "-L", "rbuild-bench", self.image], "mkfs.ext4 (the work filesystem)")
        # Direct I/O: the loop device writes straight to the disk, not into
        # a second page cache whose writeback would spill into the next
        # timed step (the `sync` before each step cannot reach it).
        self.device = run(["losetup", "--find", "--show", "--direct-io=on", self.image],
                          "losetup (the work filesystem; no loop devices here? --host-fs runs without it)",
                          capture=True).decode().strip()
        try:
            run(["mount", "-o", "discard", self.device, self.path], "mount (the work filesystem)")
        except BenchError:
            quiet(["losetup", "-d", self.device])
            raise
        self.mounted = True

    def unmount(self):
        if not self.mounted:
            return
        self.mounted = False
        if subprocess.run(["umount", self.path], stderr=subprocess.DEVNULL).returncode != 0:
            # Something still holds it (a mount left by a tool): detach it
            # now; the loop device goes when the last user does.
            quiet(["umount", "--recursive", "--lazy", self.path])
        # Marked to go with its last user (the mount) if that is still there.
        quiet(["losetup", "-d", self.device])

    def describe(self):
        return (f"ext4 on a fresh loop device (direct I/O) over a sparse {self.size >> 30} GiB image, journaled, "
                "for every tool")


class Engine:
    """A Docker engine of the suite's own: its data on the work
    filesystem, its own socket and state; an engine the machine already
    runs is left alone."""

    def __init__(self, work):
        # Under /run: containerd's socket path inside must stay short.
        self.run_dir = tempfile.mkdtemp(prefix="rbuild-bench-", dir="/run")
        self.host = f"unix://{self.run_dir}/docker.sock"
        self.data = os.path.join(work, "docker")
        self.log = os.path.join(work, "dockerd.log")
        self.proc = None

    def env(self, **extra):
        return clean_env(DOCKER_HOST=self.host, **extra)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def answers(self):
        return subprocess.run([DOCKER, "info"], env=self.env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0

    def start(self):
        log(f"starting dockerd (data {self.data}, log {self.log})")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                ["dockerd", "--iptables=false", "--bridge=none", "--data-root", self.data,
                 "--exec-root", os.path.join(self.run_dir, "exec"), "--pidfile", os.path.join(self.run_dir, "pid"),
                 "-H", self.host],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"dockerd did not come up:\n{tail(self.log)}")
            time.sleep(0.5)

    def stop(self):
        stop_process(self.proc, 30)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def host_fs(path):
    """What --host-fs runs on: the filesystem of `path`."""
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", path], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout.decode().split()
    return (f"{out[0]} ({out[1]}, the machine's own)" if len(out) == 2 else "?") + ", for every tool"


def buildah_storage(work):
    """A containers-storage configuration for buildah and skopeo: the
    overlay driver, its images and layers on the work filesystem (the
    machine's own store is left alone). Returns the file's path, for
    CONTAINERS_STORAGE_CONF."""
    conf = os.path.join(work, "storage.conf")
    with open(conf, "w") as f:
        f.write(f"""[storage]
driver = "overlay"
graphroot = "{os.path.join(work, 'containers', 'storage')}"
runroot = "{os.path.join(work, 'containers', 'run')}"
""")
    return conf


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
    """testdata/make-busybox.sh's image (docker.io/library/busybox:latest)
    as an OCI layout, which every tool loads into its store."""
    layout = os.path.join(work, "busybox")
    run([os.path.join(REPO, "testdata", "make-busybox.sh"), layout], "testdata/make-busybox.sh")
    return layout


def machine(tools, rbuild, filesystem):
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
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "filesystem": filesystem,
        "tools": {t.name: t.version() for t in tools},
        "rbuild_commit": git or "?",
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
