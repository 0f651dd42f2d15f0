"""Runs the workloads: every step for every tool, repetition after
repetition, rotating which tool goes first, checking each result before
its time is kept."""
import json
import os
import shutil
import time
import urllib.request

from .common import BenchError, log, run
from .images import check_oci_gzip
from .workload import check_image, edit_file

BASE = "docker.io/library/busybox:latest"


class Runner:
    def __init__(self, work, tools, meter, cache_registry, push_registry):
        self.work = work
        self.tools = tools
        self.docker = next(t for t in tools if t.name == "docker")
        self.meter = meter
        self.cache_registry = cache_registry
        self.push_registry = push_registry
        self.results = {}  # workload name -> step id -> tool name -> [Sample]
        self.verified = 0
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def run(self, workload, reps):
        ctx_base = os.path.join(self.work, "ctx", workload.name)
        workload.prepare(ctx_base)
        # One context per tool, hard-linked: one tool's edit leaves the others' alone.
        ctxs = {}
        for tool in self.tools:
            ctxs[tool.name] = os.path.join(self.work, "ctx", f"{workload.name}-{tool.name}")
            run(["cp", "-al", ctx_base, ctxs[tool.name]], "cp -al (context)")
        first = -1 if workload.warmup else 0
        for rep in range(first, reps):
            label = "warm-up" if rep < 0 else f"repetition {rep + 1}/{reps}"
            k = rep % len(self.tools)
            order = self.tools[k:] + self.tools[:k]
            log(f"{workload.name}: {label} ({', '.join(t.name for t in order)})")
            for step in workload.steps:
                for tool in order:
                    sample = self.step(workload, step, tool, rep, ctxs[tool.name])
                    if sample is not None and rep >= 0:
                        self.results.setdefault(workload.name, {}).setdefault(step.id, {}) \
                            .setdefault(tool.name, []).append(sample)
        for tool in self.tools:
            tool.cleanup(BASE)
        shutil.rmtree(os.path.join(self.work, "ctx"))

    def refs(self, workload, tool, rep):
        rep_name = "warmup" if rep < 0 else f"r{rep + 1}"
        pushed = f"{self.push_registry.host}/bench/{workload.name}:{tool.name}-{rep_name}"
        cache_repo = f"{self.cache_registry.host}/bench/{workload.name}-cache-{tool.name}-{rep_name}"
        return pushed, tool.cache_plan(cache_repo)

    def step(self, workload, step, tool, rep, ctx):
        """One step for one tool: setup (not timed), the timed commands, the checks."""
        where = f"{workload.name} {step.id} ({step.name}), {tool.name}"
        tag = workload.tag(tool.name)
        pushed, (cache_to, cache_from) = self.refs(workload, tool, rep)
        if step.build in ("cold", "cache-from"):
            tool.reset(BASE)
        if step.edit:
            edit_file(ctx, step.edit, f"{tool.name}.{rep}.{time.time_ns()}")
        dest = None
        if step.export:
            dest = os.path.join(self.work, f"export-{tool.name}" + (".tar" if step.export == "docker-archive" else ""))
            if os.path.isdir(dest):
                shutil.rmtree(dest)
        if step.makes_image:
            cmds = tool.build(ctx, tag, cold=step.build == "cold",
                              cache_to=cache_to if step.cache_to else None,
                              cache_from=cache_from if step.build == "cache-from" else None,
                              export=(step.export, dest) if step.export else None)
        elif step.push:
            prep, cmds = tool.push(tag, pushed)
            for cmd in prep:
                run(cmd, f"{where}: tag", env=tool.env)
        else:
            cmds = tool.export(tag, step.export, dest, ctx=ctx)

        sample = self.meter.measure(cmds, where, sample_daemon=tool.sample_daemon, env=tool.env)

        if step.cache_to:
            tool.publish_cache(tag, cache_to)
        if step.makes_image:
            image = tool.after_build()
            # A build with an export is checked through what it exported
            # (rbuild, like buildx with -o, then keeps no image in its store).
            if not step.export:
                self.check(workload, step, tool, ctx, tool, image, f"{where}: image {image[:19]}")
        if step.export == "docker-archive":
            # The archive must load into the engine and hold the same files.
            name = self.docker.load_archive(dest)
            self.check(workload, step, tool, ctx, self.docker, name, f"{where}: archive loaded as {name}")
            os.unlink(dest)
        elif step.export == "oci-gzip":
            config, layers = check_oci_gzip(dest, where)
            for key, want in workload.config.items():
                if config.get("config", {}).get(key) != want:
                    raise BenchError(f"{where}: the layout's config {key} is not {want!r}")
            shutil.rmtree(dest)
        if step.push:
            self.check_push(tool, tag, pushed, where)
        self.verified += 1
        return sample if step.measure else None

    def check(self, workload, step, tool, ctx, reader, image, where):
        paths = [c.path for c in workload.checks]
        files = reader.files(image, paths)
        check_image(workload, tool.name, ctx, files, reader.config(image), step, where)

    def check_push(self, tool, tag, ref, where):
        """The registry serves the image: its config has the local image's
        layers, and every layer blob is there with its size, gzip."""
        raw = run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                  f"{where}: skopeo inspect", capture=True)
        manifest = json.loads(raw)
        config = json.loads(run(["skopeo", "inspect", "--config", "--raw", "--tls-verify=false",
                                 f"docker://{ref}"], f"{where}: skopeo inspect --config", capture=True))
        local = tool.diff_ids(tag)
        if config["rootfs"]["diff_ids"] != local:
            raise BenchError(f"{where}: the pushed config's diff IDs are not the local image's")
        host, rest = ref.split("/", 1)
        repo = rest.rsplit(":", 1)[0]
        for layer in manifest["layers"]:
            if "gzip" not in layer["mediaType"]:
                raise BenchError(f"{where}: pushed layer {layer['digest']} is {layer['mediaType']}")
            req = urllib.request.Request(f"http://{host}/v2/{repo}/blobs/{layer['digest']}", method="HEAD")
            with self.opener.open(req, timeout=10) as r:
                size = int(r.headers.get("Content-Length", -1))
            if size != layer["size"]:
                raise BenchError(f"{where}: the registry has {layer['digest']} with {size} bytes, "
                                 f"the manifest says {layer['size']}")

