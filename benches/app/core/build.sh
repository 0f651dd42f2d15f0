#!/bin/sh
# Builds the core "binary": a manifest of the library with line and word counts.
set -e
out=$1
{
  echo "core $(cat VERSION)"
  for f in lib/*.txt; do
    echo "$(basename "$f") $(wc -l < "$f") $(wc -w < "$f")"
  done
} > "$out/MANIFEST"
sha256sum "$out/MANIFEST" > "$out/MANIFEST.sha256"
