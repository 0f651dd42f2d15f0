"""The three builders, behind one interface: what "cold", "cached" and
"cache-from" mean for each, the commands of a build, an export or a push,
and how to read the files and config of what it built.

Every tool gets the same treatment: a cold step starts from an empty
build cache with the busybox base already present; a cached step reuses
whatever the tool's earlier steps left; images are named
bench/WORKLOAD:TOOL in the tool's own store."""
import functools
import io
import json
import os
import shutil
import subprocess
import tarfile

from .common import BenchError, clean_env, quiet, run
from .images import files_from_layers

DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"


class Tool:
    name = "?"
    program = "?"  # the command its unmeasured calls run
    sample_daemon = False  # whether the work happens in a daemon whose growth we sample

    def __init__(self, work):
        self.work = work
        self.iidfile = os.path.join(work, f"{self.name}.iid")
        self.env = clean_env()

    def cli(self, *args, what=None, stdin=None, capture=False):
        """An unmeasured call of the tool, in its environment (its engine, its store)."""
        return run([self.program, *args], what or f"{self.name} {args[0]}", env=self.env, stdin=stdin,
                   capture=capture)

    def image_id(self):
        with open(self.iidfile) as f:
            return f.read().strip()

    def fresh_iidfile(self):
        if os.path.exists(self.iidfile):
            os.unlink(self.iidfile)

    def cleanup(self, base):
        """Leaves the tool's store as it was before the run (the base stays)."""
        self.reset(base)

    def build(self, ctx, tag, cold, cache_to=None, cache_from=None, export=None):
        """The commands of a build step: the build, then the export of its
        image when the step has one (docker and buildah; rbuild's differ)."""
        self.fresh_iidfile()
        cmd = self.build_command(tag)
        if cold:
            cmd.append("--no-cache")
        if cache_to:
            cmd += self.cache_to_args(cache_to)
        if cache_from:
            cmd += ["--cache-from", cache_from]
        cmds = [cmd + [ctx]]
        if export:
            cmds += self.export(tag, *export, ctx=ctx)
        return cmds


class Docker(Tool):
    """docker build with BuildKit (DOCKER_BUILDKIT=1, the engine's own
    BuildKit, no buildx: Debian's docker.io has none), docker save,
    skopeo for OCI layouts, inline cache for --cache-from."""
    name = "docker"
    program = DOCKER
    sample_daemon = True

    def __init__(self, work, engine):
        super().__init__(work)
        self.engine = engine
        self.env = engine.env(DOCKER_BUILDKIT="1")
        self.images = set()  # image IDs our builds made, removed by reset()
        self.tags = set()

    def load_base(self, layout):
        tar = subprocess.Popen(["tar", "-C", layout, "-c", "."], stdout=subprocess.PIPE)
        self.cli("load", what="docker load (busybox)", stdin=tar.stdout)
        tar.stdout.close()
        if tar.wait() != 0:
            raise BenchError("tar of the busybox image failed")

    def version(self):
        out = self.cli("version", "--format", "{{.Server.Version}}", capture=True)
        return "docker engine " + out.decode().strip()

    def reset(self, base):
        """No image of ours, an empty build cache (BuildKit's cache of
        contexts too); the base image stays."""
        for ref in sorted(self.tags) + sorted(self.images):
            quiet([DOCKER, "rmi", "-f", ref], env=self.env)
        self.images.clear()
        self.tags.clear()
        self.cli("builder", "prune", "-af")

    def build_command(self, tag):
        self.tags.add(tag)
        return [DOCKER, "build", "--progress=plain", "--network=none", "-t", tag, "--iidfile", self.iidfile]

    def cache_to_args(self, cache_to):
        # docker without buildx exports cache inline only (mode=min).
        return ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]

    def export(self, tag, kind, dest, ctx=None):
        if kind == "docker-archive":
            return [[DOCKER, "save", "-o", dest, tag]]
        if kind == "oci-gzip":
            # The engine has no OCI export without buildx; skopeo reads the
            # image from the daemon and gzips its layers.
            return [["skopeo", "copy", "-q", "--insecure-policy", "--src-daemon-host", self.engine.host,
                     f"docker-daemon:{tag}", f"oci:{dest}:latest"]]
        raise BenchError(f"docker: unknown export {kind}")

    def push(self, tag, ref):
        self.tags.add(ref)
        return ([[DOCKER, "tag", tag, ref]], [[DOCKER, "push", "-q", ref]])

    def after_build(self):
        image = self.image_id()
        self.images.add(image)
        return image

    def cache_plan(self, cache_repo):
        """(what --cache-to gets, what --cache-from gets): inline cache in
        the image config, read back from the image pushed there."""
        ref = cache_repo + ":inline"
        return ref, ref

    def publish_cache(self, tag, cache_to):
        """Untimed, after a build with cache_to: inline cache travels with the image."""
        self.tags.add(cache_to)
        self.cli("tag", tag, cache_to, what="docker tag (inline cache)")
        self.cli("push", "-q", cache_to, what="docker push (inline cache)")

    def files(self, image, paths):
        script = "tar -cf - " + " ".join(f"'{p}'" for p in paths) + " 2>/dev/null; true"
        out = self.cli("run", "--rm", "--pull=never", "--network=none", "--entrypoint", "sh",
                          image, "-c", script, what=f"docker run {image}", capture=True)
        files = {}
        with tarfile.open(fileobj=io.BytesIO(out)) as t:
            for m in t:
                if m.isfile():
                    files["/" + m.name.lstrip("/")] = t.extractfile(m).read()
        return files

    def config(self, image):
        return json.loads(self.cli("image", "inspect", "--format", "{{json .Config}}", image, capture=True))

    def diff_ids(self, image):
        return json.loads(self.cli("image", "inspect", "--format", "{{json .RootFS.Layers}}", image,
                                      capture=True))

    def load_archive(self, archive):
        """Loads a docker-save archive into the engine (the proof that it loads)."""
        out = self.cli("load", "-i", archive, what=f"docker load -i {archive}", capture=True).decode()
        names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Loaded image")]
        if not names:
            raise BenchError(f"docker load of {archive} named no image: {out}")
        for n in names:
            self.tags.add(n)
        return names[0]


class Buildah(Tool):
    """buildah bud with --layers (its build cache), pushes to
    docker-archive:, oci: and docker:// (gzip), --cache-to/--cache-from
    a registry repository."""
    name = "buildah"
    program = "buildah"

    def __init__(self, work, storage_conf):
        super().__init__(work)
        # The store buildah and skopeo use (the suite's, on the work filesystem).
        self.env = clean_env(CONTAINERS_STORAGE_CONF=storage_conf)

    def load_base(self, layout):
        run(["skopeo", "copy", "-q", "--insecure-policy", f"oci:{layout}",
             "containers-storage:docker.io/library/busybox:latest"], "skopeo copy busybox to buildah's store",
            env=self.env)

    def version(self):
        return self.cli("--version", capture=True).decode().strip()

    def reset(self, base):
        """Every image but the base gone (intermediate layers and pulled
        cache images too), no working container."""
        quiet(["buildah", "rm", "--all"], env=self.env)
        out = self.cli("images", "-a", "-q", "--no-trunc", what="buildah images", capture=True).decode()
        base_id = self.cli("inspect", "--type", "image", "--format", "{{.FromImageID}}", base,
                           what="buildah inspect base", capture=True).decode().strip()
        for image in out.split():
            if image.split(":")[-1] != base_id.split(":")[-1]:
                quiet(["buildah", "rmi", "-f", image], env=self.env)

    def build_command(self, tag):
        return ["buildah", "bud", "--layers", "--network", "none", "--tls-verify=false",
                "-t", tag, "--iidfile", self.iidfile]

    def cache_to_args(self, cache_to):
        return ["--cache-to", cache_to]

    def export(self, tag, kind, dest, ctx=None):
        if kind == "docker-archive":
            return [["buildah", "push", "-q", tag, f"docker-archive:{dest}:{tag}"]]
        if kind == "oci-gzip":
            return [["buildah", "push", "-q", tag, f"oci:{dest}:latest"]]
        raise BenchError(f"buildah: unknown export {kind}")

    def push(self, tag, ref):
        return ([], [["buildah", "push", "-q", "--tls-verify=false", tag, f"docker://{ref}"]])

    def after_build(self):
        return self.image_id()

    def cache_plan(self, cache_repo):
        """buildah's --cache-to pushes each layer to a repository; --cache-from reads it."""
        return cache_repo, cache_repo

    def publish_cache(self, tag, cache_to):
        pass  # the build pushed it

    def files(self, image, paths):
        ctr = self.cli("from", "--pull=never", image, what=f"buildah from {image}",
                       capture=True).decode().strip()
        try:
            mnt = self.cli("mount", ctr, what=f"buildah mount {ctr}", capture=True).decode().strip()
            files = {}
            for p in paths:
                full = os.path.join(mnt, p.lstrip("/"))
                if os.path.isfile(full) and not os.path.islink(full):
                    with open(full, "rb") as f:
                        files[p] = f.read()
            return files
        finally:
            quiet(["buildah", "umount", ctr], env=self.env)
            quiet(["buildah", "rm", ctr], env=self.env)

    def inspect(self, image):
        return json.loads(self.cli("inspect", "--type", "image", image, what=f"buildah inspect {image}",
                                   capture=True))["OCIv1"]

    def config(self, image):
        return self.inspect(image).get("config", {})

    def diff_ids(self, image):
        return self.inspect(image)["rootfs"]["diff_ids"]


class Rbuild(Tool):
    """rbuild with its own root: cold means a new root with the base loaded."""
    name = "rbuild"

    def __init__(self, work, binary, base_layout):
        super().__init__(work)
        self.program = binary
        self.base_layout = base_layout
        self.root = None
        self.roots = 0

    def load_base(self, layout):
        pass  # every new root loads it (reset)

    def version(self):
        return self.cli("--version", capture=True).decode().strip()

    def reset(self, base):
        if self.root:
            shutil.rmtree(self.root)
        self.roots += 1
        self.root = os.path.join(self.work, f"rbuild-root-{self.roots}")
        run([self.program, "--root", self.root, "load", "-i", self.base_layout], "rbuild load (base)")

    def cleanup(self, base):
        if self.root:
            shutil.rmtree(self.root)
            self.root = None

    def cmd(self, *args):
        return [self.program, "--root", self.root] + list(args)

    def build(self, ctx, tag, cold, cache_to=None, cache_from=None, export=None):
        self.fresh_iidfile()
        cmd = self.cmd("build", "--network", "none", "--progress=plain", "-t", tag, "--iidfile", self.iidfile)
        if cold:
            cmd.append("--no-cache")
        if cache_to:
            cmd += ["--cache-to", f"type=registry,ref={cache_to},mode=max"]
        if cache_from:
            cmd += ["--cache-from", f"type=registry,ref={cache_from}"]
        if export:
            kind, dest = export
            if kind == "docker-archive":
                cmd += ["-o", f"type=docker,dest={dest}"]
            elif kind == "oci-gzip":
                cmd += ["-o", f"type=oci,dest={dest},tar=false,compression=gzip"]
            else:
                raise BenchError(f"rbuild: unknown export {kind}")
        return [cmd + [ctx]]

    def export(self, tag, kind, dest, ctx=None):
        if kind == "docker-archive":
            return [self.cmd("save", "-o", dest, tag)]
        if kind == "oci-gzip":
            # rbuild exports OCI layouts from a build: this one is all cache hits.
            return self.build(ctx, tag, cold=False, export=(kind, dest))
        raise BenchError(f"rbuild: unknown export {kind}")

    def push(self, tag, ref):
        return ([self.cmd("tag", tag, ref)], [self.cmd("push", ref)])

    def after_build(self):
        return self.image_id()

    def cache_plan(self, cache_repo):
        """A registry cache export, mode=max, in its own repository."""
        return cache_repo + ":cache", cache_repo + ":cache"

    def publish_cache(self, tag, cache_to):
        pass  # the build pushed it

    def inspect(self, image):
        return json.loads(run(self.cmd("inspect", image), f"rbuild inspect {image}", capture=True))[0]

    def files(self, image, paths):
        """From the layers in rbuild's content store (uncompressed, by diff
        ID); from `rbuild save` when a layer it must read is stored by
        another name (a gzip base layer)."""
        diff_ids = self.inspect(image)["rootfs"]["diff_ids"]
        layers = [os.path.join(self.root, "blobs", "sha256", d.split(":", 1)[1]) for d in diff_ids]
        try:
            # Scanning stops at the first layer that has everything, usually above the base.
            return files_from_layers([functools.partial(open, p, "rb") for p in layers], paths)
        except FileNotFoundError:
            pass  # a layer below is stored compressed, by another name
        saved = os.path.join(self.work, "rbuild-verify.tar")
        run(self.cmd("save", "-o", saved, image), f"rbuild save {image}")
        try:
            with tarfile.open(saved) as outer:
                manifest = json.load(outer.extractfile("manifest.json"))
                return files_from_layers([functools.partial(outer.extractfile, name)
                                          for name in manifest[0]["Layers"]], paths)
        finally:
            os.unlink(saved)

    def config(self, image):
        return self.inspect(image).get("config", {})

    def diff_ids(self, image):
        return self.inspect(image)["rootfs"]["diff_ids"]
