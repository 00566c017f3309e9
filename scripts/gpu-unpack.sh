# Sourced by scripts/gpu-check, scripts/gpu-curve and scripts/gpu-profile.
# unpack_bin DIR: prints the directory holding the executables of DIR. Compressed
# binaries (`scripts/gpu-check --build-only`: trainer.xz, schedules-test.xz) are unpacked
# into a temporary directory (not under the results, which a device call brings back),
# with Python's lzma so that the GPU machine needs no xz.
unpack_bin() {
    local dir="$1" unpacked f
    if [ -x "$dir/trainer" ] || [ ! -f "$dir/trainer.xz" ]; then
        echo "$dir"
        return
    fi
    unpacked="$(mktemp -d)"
    for f in trainer schedules-test; do
        [ -f "$dir/$f.xz" ] || continue
        # Checked by hand: callers run this inside `$(...)`, where `set -e` is off, so a
        # truncated archive would otherwise leave a partial binary and go on.
        if ! python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$dir/$f.xz" "$unpacked/$f"; then
            echo "unpack_bin: $dir/$f.xz does not unpack (truncated or not xz?)" >&2
            rm -rf "$unpacked"
            return 1
        fi
        chmod +x "$unpacked/$f" || return 1
    done
    echo "$unpacked"
}
