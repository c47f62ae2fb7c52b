#!/usr/bin/env bash
# Builds llama.cpp's llama-server and llama-bench from the llama.cpp vendored in the pinned
# llama-cpp-python sdist, so side-by-side benchmarks run the very same llama.cpp as edged.
#
# By default only the tools' own code (server, common, llama-bench: ~70 files) is compiled and
# linked against the libllama/libggml/libmtmd shared libraries of the installed llama-cpp-python
# wheel (same version, checked): the peer then runs the very machine code edged runs, and the
# build skips the ~140 files of llama.cpp itself (minutes on a busy 2-core machine).
# EDGED_PEER_FULL_BUILD=1 (or no matching wheel) builds everything from the sdist instead.
# Idempotent: skips the build when both binaries exist. Prints the llama-server path last.
#   bench/build_llama_server.sh
#   PYTHON=.venv/bin/python EDGED_PEER_CACHE=/some/dir bench/build_llama_server.sh
# EDGED_PEER_CMAKE_ARGS (e.g. "-DGGML_CUDA=on") builds the whole of llama.cpp with those flags
# (bench/gpu.sh), in a cache of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

VER="$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1)"
VER="${VER#*==}"
[ -n "$VER" ] || { echo "no llama-cpp-python pin in pyproject.toml" >&2; exit 1; }
CACHE="${EDGED_PEER_CACHE:-$HOME/.cache/edged-peer}/$VER"
EXTRA_CMAKE=()
if [ -n "${EDGED_PEER_CMAKE_ARGS:-}" ]; then
    read -r -a EXTRA_CMAKE <<< "$EDGED_PEER_CMAKE_ARGS"
    CACHE="$CACHE-$(printf %s "$EDGED_PEER_CMAKE_ARGS" | tr -c 'A-Za-z0-9' _)"
    EDGED_PEER_FULL_BUILD=1  # the wheel's CPU libraries would not do
fi
BUILD="$CACHE/build"
SERVER="$BUILD/bin/llama-server"
BENCH="$BUILD/bin/llama-bench"

if [ -x "$SERVER" ] && [ -x "$BENCH" ]; then
    echo "$SERVER"
    exit 0
fi

mkdir -p "$CACHE"
if [ ! -f "$CACHE/llama_cpp_python-$VER.tar.gz" ]; then
    # --no-binary for this package only: its build backend may come as a wheel.
    python3 -m pip download --no-binary llama-cpp-python --no-deps \
        "llama-cpp-python==$VER" -d "$CACHE" >&2
fi
SRC="$CACHE/llama_cpp_python-$VER"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
    tar -xzf "$CACHE/llama_cpp_python-$VER.tar.gz" -C "$CACHE"
fi

# Only the two tools: no tests, no examples, no curl (models are local files).
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF "${EXTRA_CMAKE[@]}" >&2

# The installed wheel's shared libraries, if it is the pinned version and ships libmtmd.
PY="${PYTHON:-}"
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3
WHEEL_LIB="$("$PY" - "$VER" <<'EOF' 2>/dev/null || true
import sys, pathlib, importlib.metadata as md
import llama_cpp
lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
if md.version("llama-cpp-python") == sys.argv[1] and (lib / "libmtmd.so").exists():
    print(lib)
EOF
)"

if [ -z "${EDGED_PEER_FULL_BUILD:-}" ] && [ -n "$WHEEL_LIB" ] && [ -f "$WHEEL_LIB/libllama.so" ]; then
    echo "linking against llama-cpp-python $VER's libraries from $WHEEL_LIB" >&2
    LIB="$CACHE/lib"
    mkdir -p "$LIB"
    cp -P "$WHEEL_LIB"/lib*.so* "$LIB"/
    cd "$BUILD"
    mapfile -t OBJS < <(ninja -t targets all | grep -E '\.o:' | cut -d: -f1 |
        grep -E '^(tools/server|common|vendor/hash|tools/ui|vendor/cpp-httplib|tools/llama-bench)/')
    ninja -j"$(nproc)" "${OBJS[@]}" >&2
    COMMON=() SERVER_OBJS=() BENCH_OBJS=()
    for o in "${OBJS[@]}"; do
        case "$o" in
            tools/server/*) SERVER_OBJS+=("$o") ;;
            tools/llama-bench/*) BENCH_OBJS+=("$o") ;;
            *) COMMON+=("$o") ;;
        esac
    done
    LIBS=(-L"$LIB" -Wl,-rpath,"$LIB" -lmtmd -lllama -lggml -lggml-cpu -lggml-base
        -ldl -lm -lpthread -lssl -lcrypto)
    mkdir -p bin
    c++ -O3 -DNDEBUG "${SERVER_OBJS[@]}" "${COMMON[@]}" -o bin/llama-server "${LIBS[@]}" >&2
    c++ -O3 -DNDEBUG "${BENCH_OBJS[@]}" "${COMMON[@]}" -o bin/llama-bench "${LIBS[@]}" >&2
else
    cmake --build "$BUILD" --target llama-server llama-bench -j"$(nproc)" >&2
fi

[ -x "$SERVER" ] && [ -x "$BENCH" ] || { echo "build finished without the binaries" >&2; exit 1; }
echo "$SERVER"
