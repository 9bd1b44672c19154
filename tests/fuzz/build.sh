#!/bin/bash
# tests/fuzz/build.sh: build the libFuzzer harnesses with clang into OUT (default
# tests/fuzz/build under the build tree). The normal (gcc) build is not involved: the library
# sources listed in Makefile.am are compiled again here with -fsanitize=fuzzer-no-link,address,
# undefined. Exit 77 (with why) when clang or its libFuzzer runtime is missing.
#   tests/fuzz/build.sh [OUT [NAME...]]   (only the harnesses named; FUZZ_CC=clang-14 picks
#                                          the compiler)
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-${top_builddir:-$top}/tests/fuzz/build}
shift || true
mkdir -p "$out"
out=$(cd "$out" && pwd)

cc=${FUZZ_CC:-}
if [ -z "$cc" ]; then
    for c in clang clang-14; do
        command -v "$c" >/dev/null 2>&1 && { cc=$c; break; }
    done
fi
[ -n "$cc" ] || { echo "no clang (Debian packages clang-14 libclang-rt-14-dev)" >&2; exit 77; }
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n);\n'\
'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; return (int)n & 0; }\n' \
    >"$out/probe.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined -o "$out/probe" "$out/probe.c" 2>"$out/probe.log"; then
    echo "$cc cannot link libFuzzer (Debian package libclang-rt-14-dev): $(head -1 "$out/probe.log")" >&2
    exit 77
fi
for p in json-c libxxhash zlib libnbd; do
    pkg-config --exists "$p" || { echo "pkg-config: $p missing" >&2; exit 77; }
done

# config.h: what configure's AC_USE_SYSTEM_EXTENSIONS and AC_INIT give the sources.
version=$(sed -n 's/^AC_INIT(\[blkmig\], \[\([^]]*\)\].*/\1/p' "$top/configure.ac")
cat >"$out/config.h.new" <<EOH
/* config.h for the fuzz build (tests/fuzz/build.sh). */
#define _GNU_SOURCE 1
#define PACKAGE "blkmig"
#define PACKAGE_VERSION "$version"
#define VERSION "$version"
EOH
cmp -s "$out/config.h.new" "$out/config.h" 2>/dev/null || mv "$out/config.h.new" "$out/config.h"
rm -f "$out/config.h.new"

# The library's .c files, as Makefile.am lists them, plus the CLI's VM process (its factory
# builds a destination's VM; the control harness includes vmproc.c itself for its static
# dispatch function) and the helpers it needs.
lib_srcs=$(sed -n '/^libblkmig_a_SOURCES/,/^$/p' "$top/Makefile.am" | tr ' \t\\' '\n\n\n' |
    grep '\.c$' | tr '\n' ' ')
lib_srcs="$lib_srcs cli/util.c cli/vmproc.c"

exec make --no-print-directory -f "$top/tests/fuzz/fuzz.mk" -j"${FUZZ_JOBS:-2}" \
    TOP="$top" OUT="$out" CC="$cc" LIB_SRCS="$lib_srcs" \
    PKG_CFLAGS="$(pkg-config --cflags json-c libxxhash zlib libnbd)" \
    PKG_LIBS="$(pkg-config --libs json-c libxxhash zlib libnbd) -laio -lm -pthread" \
    "${@/#/$out/fuzz-}"
