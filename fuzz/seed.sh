#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the BuildKit conformance files in shared/.
# The corpus is generated, never committed (see .gitignore).
#
#   fuzz/seed.sh [CONFORMANCE_DIR]
#
# CONFORMANCE_DIR defaults to ../shared/conformance/buildkit next to the
# checkout (/work/shared/conformance/buildkit on a developer machine).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${1:-}"
if [[ -z "$src" ]]; then
    for candidate in "$here/../../shared/conformance/buildkit" /work/shared/conformance/buildkit; do
        if [[ -d "$candidate" ]]; then src="$candidate"; break; fi
    done
fi
if [[ -z "$src" || ! -d "$src/parser" ]]; then
    echo "seed.sh: BuildKit conformance files not found (pass the directory)" >&2
    exit 1
fi

corpus="$here/corpus"
mkdir -p "$corpus/parse" "$corpus/compile" "$corpus/expand"

# parse and compile: every Dockerfile the parser conformance tests use.
n=0
for f in "$src"/parser/testfiles/*/Dockerfile "$src"/parser/testfiles-negative/*/Dockerfile \
         "$src"/parser/testfile-line/Dockerfile; do
    [[ -f "$f" ]] || continue
    name="$(basename "$(dirname "$f")")"
    cp "$f" "$corpus/parse/$name"
    cp "$f" "$corpus/compile/$name"
    n=$((n + 1))
done

# compile: a few inputs with an explicit options section (after a NUL).
printf 'ARG V=1\nFROM scratch AS a\nARG V\nENV X=$V\nFROM a AS b\nCOPY --chmod=0644 f /d/\n\0V=2\n@a\n' \
    >"$corpus/compile/options-target"
printf 'FROM scratch\nARG A B=${A:-x}\nLABEL l=$B\nEXPOSE ${P:-80}/udp\nCOPY . /app/\n\0A=1\nP=8000-8002\n-**/*.md\n-!README.md\n' \
    >"$corpus/compile/options-args"

# expand: each word of the shell conformance tables (the text before '|'),
# with an environment in the following lines.
m=0
for table in "$src"/shell/envVarTest "$src"/shell/wordsTest; do
    [[ -f "$table" ]] || continue
    while IFS= read -r line; do
        case "$line" in '#'*|'ENV '*|'') continue ;; esac
        word="${line#?|}"          # envVarTest rows start with "A|", "U|" or "W|"
        word="${word%%|*}"
        word="${word%"${word##*[! ]}"}"   # trailing spaces
        m=$((m + 1))
        printf '%s\nPWD=/home\nhi=hi\nspace=abc  def\nempty=\n' "$word" >"$corpus/expand/table-$m"
    done <"$table"
done

echo "seeded $n Dockerfiles into corpus/parse and corpus/compile, $m words into corpus/expand"
