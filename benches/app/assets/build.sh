#!/bin/sh
# Summarises the asset index: one line per table with its row count.
set -e
out=$1
for f in data/*.csv; do
  echo "$(basename "$f" .csv) $(wc -l < "$f")"
done | sort > "$out/TABLES"
cp manifest.txt "$out/manifest.txt"
