#!/usr/bin/env bash
# Builds the busybox base image used by rbuild's tests and quickstart, from
# Debian's busybox-static, without any registry.
#
#   testdata/make-busybox.sh OUTDIR
#
# OUTDIR becomes an OCI image layout (index.json, oci-layout, blobs/) that is
# at the same time a `docker save` directory (manifest.json, repositories), the
# way Docker 25 writes it: `rbuild load -i OUTDIR`, `skopeo inspect oci:OUTDIR`
# and `tar -C OUTDIR -c . | docker load` all accept it. The image is named
# docker.io/library/busybox:latest. Output is byte-for-byte reproducible for a
# given busybox binary (sorted entries, fixed mtimes, numeric owners).
set -euo pipefail

out=${1:?usage: make-busybox.sh OUTDIR}
busybox=${BUSYBOX:-/bin/busybox}
if [ ! -x "$busybox" ] || ! "$busybox" --list-full >/dev/null 2>&1; then
  echo "make-busybox.sh: $busybox is not a static busybox; install Debian's busybox-static" >&2
  exit 1
fi
case "$(uname -m)" in
  x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; armv7l) arch=arm ;; i?86) arch=386 ;;
  ppc64le) arch=ppc64le ;; s390x) arch=s390x ;; riscv64) arch=riscv64 ;; *) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,root,tmp,home/app,var,usr/bin,usr/sbin,sbin}
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
# One symlink per applet, as Alpine lays them out.
"$busybox" --list-full | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -sf /bin/busybox "$root/$applet"
done
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
staff:x:50:app
app:x:1000:
nogroup:x:65534:
GROUP
chown 1000:1000 "$root/home/app"

layer=$work/layer.tar
# Keep the one owner that is not root: /home/app belongs to app.
(cd "$root" && tar --sort=name --mtime=@0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  --owner=0 --group=0 --exclude=home/app -cf "$layer" -- * \
  && tar --mtime=@0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  --owner=1000 --group=1000 --no-recursion -rf "$layer" home/app)
diff_id=$(sha256sum "$layer" | cut -d' ' -f1)
gzip -n -9 "$layer"
layer_gz=$layer.gz

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
put() { # put FILE -> prints "hex size", moves FILE into the blob store
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$out/blobs/sha256/$hex"
  echo "$hex $size"
}
read -r layer_hex layer_size < <(put "$layer_gz")

printf '%s' "{\"architecture\":\"$arch\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"testdata/make-busybox.sh: busybox-static rootfs\"}]}" > "$work/config.json"
read -r config_hex config_size < <(put "$work/config.json")

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_hex\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_hex\",\"size\":$layer_size}]}" > "$work/manifest.json"
read -r manifest_hex manifest_size < <(put "$work/manifest.json")

printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_hex\",\"size\":$manifest_size,\"annotations\":{\"io.containerd.image.name\":\"docker.io/library/busybox:latest\",\"org.opencontainers.image.ref.name\":\"latest\"},\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"}}]}" > "$out/index.json"
printf '%s' "[{\"Config\":\"blobs/sha256/$config_hex\",\"RepoTags\":[\"busybox:latest\"],\"Layers\":[\"blobs/sha256/$layer_hex\"]}]" > "$out/manifest.json"
printf '%s' "{\"busybox\":{\"latest\":\"$layer_hex\"}}" > "$out/repositories"
echo "busybox image: $out (manifest sha256:$manifest_hex, config sha256:$config_hex)"
