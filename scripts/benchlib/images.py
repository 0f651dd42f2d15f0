"""Reading what the tools produced, to check it: files out of layer
tarballs, OCI layouts, docker-save archives."""
import hashlib
import json
import os
import subprocess
import tarfile

from .common import BenchError


def scan_layer(fileobj, want, files, gone):
    """Collects the wanted paths from one layer tarball; layers above this
    one were scanned before (their files and whiteouts win)."""
    with tarfile.open(fileobj=fileobj, mode="r:*") as t:
        for m in t:
            name = m.name[2:] if m.name.startswith("./") else m.name
            name = "/" + name.strip("/")
            base = os.path.basename(name)
            if base.startswith(".wh."):
                hidden = os.path.join(os.path.dirname(name), base[4:])
                if hidden in want and hidden not in files:
                    gone.add(hidden)
                continue
            if name in want and name not in files and name not in gone and m.isfile():
                files[name] = t.extractfile(m).read()


def files_from_layers(open_layers, paths):
    """The wanted files of an image, given a callable per layer that opens
    it (a binary file object), bottom layer first; scanning starts at the
    top and stops once every path is found or deleted."""
    want, files, gone = set(paths), {}, set()
    for open_layer in reversed(open_layers):
        if want <= set(files) | gone:
            break
        with open_layer() as f:
            scan_layer(f, want, files, gone)
    return files


def sha256_stream(cmd_or_path):
    """sha256 of a file, or of a command's output (a decompressor)."""
    h = hashlib.sha256()
    if isinstance(cmd_or_path, list):
        p = subprocess.Popen(cmd_or_path, stdout=subprocess.PIPE)
        for chunk in iter(lambda: p.stdout.read(1 << 20), b""):
            h.update(chunk)
        if p.wait() != 0:
            raise BenchError(f"{' '.join(cmd_or_path)} failed")
    else:
        with open(cmd_or_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_oci_gzip(layout, who):
    """An OCI layout with one image whose layers are all gzip and decompress
    to the config's diff IDs; returns (config, layer count)."""
    def blob(digest):
        return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])

    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    if len(index.get("manifests", [])) != 1:
        raise BenchError(f"{who}: {layout} has {len(index.get('manifests', []))} manifests, expected 1")
    with open(blob(index["manifests"][0]["digest"])) as f:
        manifest = json.load(f)
    with open(blob(manifest["config"]["digest"])) as f:
        config = json.load(f)
    diff_ids = config["rootfs"]["diff_ids"]
    if len(diff_ids) != len(manifest["layers"]):
        raise BenchError(f"{who}: {layout}: {len(manifest['layers'])} layers but {len(diff_ids)} diff IDs")
    for layer, diff_id in zip(manifest["layers"], diff_ids):
        if not layer["mediaType"].endswith("gzip"):
            raise BenchError(f"{who}: {layout} has a {layer['mediaType']} layer, expected gzip")
        path = blob(layer["digest"])
        if os.path.getsize(path) != layer["size"] or sha256_stream(path) != layer["digest"]:
            raise BenchError(f"{who}: {layout}: blob {layer['digest']} does not match its descriptor")
        if sha256_stream(["gzip", "-dc", path]) != diff_id:
            raise BenchError(f"{who}: {layout}: layer {layer['digest']} does not decompress to {diff_id}")
    return config, len(diff_ids)
