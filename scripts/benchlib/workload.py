"""Workloads: benches/NAME/workload.toml, read and checked here, and the
checks it declares on the images the tools build.

The format is described in benches/README.md."""
import hashlib
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Optional

from .common import BENCHES, BenchError, log, run

BUILDS = ("cold", "cached", "cache-from", "none")
EXPORTS = ("docker-archive", "oci-gzip")
CHECK_KINDS = ("equals", "equals_context", "contains_sha256_of", "lines", "kept")


@dataclass
class Step:
    id: str
    name: str
    build: str
    export: Optional[str] = None
    push: bool = False
    cache_to: bool = False
    edit: Optional[dict] = None
    measure: bool = True
    target: Optional[float] = None  # the most rbuild may take, as a fraction of docker's time

    @property
    def makes_image(self):
        return self.build != "none"


@dataclass
class Check:
    path: str
    kind: str
    value: object


@dataclass
class Workload:
    name: str
    dir: str
    title: str
    about: str
    steps: list
    checks: list
    config: dict
    generate: Optional[list] = None
    reps: int = 5
    warmup: bool = True
    kept: dict = field(default_factory=dict)  # tool -> path -> bytes, for `kept` checks

    @property
    def tag_repo(self):
        return f"bench/{self.name}"

    def tag(self, tool):
        return f"{self.tag_repo}:{tool}"

    def prepare(self, dest):
        """Writes the build context: the workload's files, then what its generator adds."""
        shutil.copytree(self.dir, dest, ignore=shutil.ignore_patterns("workload.toml"))
        if self.generate:
            script, *args = self.generate
            log(f"{self.name}: generating the context ({' '.join(self.generate)})")
            run([sys.executable, os.path.join(BENCHES, script)] + args + [dest], f"{self.name}: generate")


def fail(path, msg):
    raise BenchError(f"{path}: {msg}")


def load(name):
    d = os.path.join(BENCHES, name)
    path = os.path.join(d, "workload.toml")
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(path, str(e))
    known = {"title", "about", "generate", "reps", "warmup", "step", "check", "config"}
    for k in spec:
        if k not in known:
            fail(path, f"unknown key {k!r} (known: {', '.join(sorted(known))})")
    if not os.path.exists(os.path.join(d, "Dockerfile")):
        fail(path, "the workload has no Dockerfile next to it")
    steps = []
    for i, s in enumerate(spec.get("step", [])):
        where = f"step {i + 1}"
        unknown = set(s) - set(Step.__dataclass_fields__)
        if unknown:
            fail(path, f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for k in ("id", "name", "build"):
            if k not in s:
                fail(path, f"{where}: missing {k!r}")
        step = Step(**s)
        if step.build not in BUILDS:
            fail(path, f"{where}: build must be one of {', '.join(BUILDS)}")
        if step.export is not None and step.export not in EXPORTS:
            fail(path, f"{where}: export must be one of {', '.join(EXPORTS)}")
        if step.build == "none" and not (step.export or step.push):
            fail(path, f"{where}: build = \"none\" needs an export or a push")
        if step.push and step.build != "none":
            fail(path, f"{where}: a push step pushes what an earlier step built (build = \"none\")")
        if step.build == "none" and not any(p.makes_image for p in steps):
            fail(path, f"{where}: nothing was built before it")
        if step.build == "cache-from" and not any(p.cache_to for p in steps):
            fail(path, f"{where}: no earlier step has cache_to = true")
        if step.edit is not None and set(step.edit) != {"file", "content"}:
            fail(path, f"{where}: edit takes file and content")
        if any(p.id == step.id for p in steps):
            fail(path, f"{where}: id {step.id!r} used twice")
        steps.append(step)
    if steps and steps[0].build != "cold":
        fail(path, "the first step must be a cold build")
    if not any(s.measure for s in steps):
        fail(path, "no measured step")
    checks = []
    for i, c in enumerate(spec.get("check", [])):
        kinds = [k for k in c if k != "path"]
        if "path" not in c or len(kinds) != 1 or kinds[0] not in CHECK_KINDS:
            fail(path, f"check {i + 1}: needs path and one of {', '.join(CHECK_KINDS)}")
        checks.append(Check(c["path"], kinds[0], c[kinds[0]]))
    return Workload(name=name, dir=d, title=spec.get("title", name), about=" ".join(spec.get("about", "").split()),
                    steps=steps, checks=checks, config=spec.get("config", {}), generate=spec.get("generate"),
                    reps=spec.get("reps", 5), warmup=spec.get("warmup", True))


def names():
    """Every workload under benches/, in the order of their first step's id."""
    found = [n for n in os.listdir(BENCHES) if os.path.exists(os.path.join(BENCHES, n, "workload.toml"))]
    return sorted(found, key=lambda n: (load(n).steps[0].id, n))


def check_image(workload, tool, ctx, files, config, step, where):
    """Applies the workload's checks to one image's files and config."""
    for c in workload.checks:
        data = files.get(c.path)
        if data is None:
            raise BenchError(f"{where}: {c.path} is missing")
        if c.kind == "equals":
            if data != c.value.encode():
                raise BenchError(f"{where}: {c.path} is {data[:200]!r}, expected {c.value!r}")
        elif c.kind == "equals_context":
            with open(os.path.join(ctx, c.value), "rb") as f:
                want = f.read()
            if data != want:
                raise BenchError(f"{where}: {c.path} differs from the context's {c.value}")
        elif c.kind == "contains_sha256_of":
            with open(os.path.join(ctx, c.value), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            if digest.encode() not in data:
                raise BenchError(f"{where}: {c.path} does not list {c.value}'s sha256 {digest}")
        elif c.kind == "lines":
            if len(data.splitlines()) != c.value:
                raise BenchError(f"{where}: {c.path} has {len(data.splitlines())} lines, expected {c.value}")
        elif c.kind == "kept":
            kept = workload.kept.setdefault(tool, {})
            if step.build in ("cached", "cache-from") and step.edit is None and c.path in kept:
                if kept[c.path] != data:
                    raise BenchError(f"{where}: {c.path} changed: a RUN ran again ({kept[c.path]!r} -> {data!r})")
            kept[c.path] = data
    for key, want in workload.config.items():
        if config.get(key) != want:
            raise BenchError(f"{where}: config {key} is {config.get(key)!r}, expected {want!r}")


def edit_file(ctx, edit, token):
    """Rewrites one file of a tool's context. Through a new file: the
    tools' contexts are hard-linked copies of one tree."""
    path = os.path.join(ctx, edit["file"])
    with open(path + ".new", "w") as f:
        f.write(edit["content"].replace("{token}", token))
    os.replace(path + ".new", path)
