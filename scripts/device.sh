# The device build of ovl: the static binary that goes into a ROM. Sourced after lib.sh.
#
# Nightly rebuilds the standard library for the target (-Zbuild-std) with panic=immediate-abort
# (no panic formatting or unwinding), without unwind tables, non-PIE, identical code folded,
# with `{:?}` printing nothing (-Zfmt-debug=none: what a user reads must use Display), and
# without clap's help renderer (help rendered at build time instead: src/help.rs), and with
# LLVM told to inline less and to outline repeated code more (-3 KB on aarch64):
# about half the size of the stable release build. The host build and the tests stay on stable
# (`cargo build --release --target T` still works and is what OVL_STABLE_DEVICE=1 uses).
#
# The C side of a static musl binary (crt objects, libc.a, libunwind.a):
# - aarch64 and x86_64: the objects rustup ships with the stable musl targets (nightly's are
#   not downloadable here), handed to the linker by path;
# - armv7 (rustup has no musl std for it): zig's clang, from the ziglang wheel, which builds
#   musl for arm-linux-musleabihf itself.

DEVICE_TARGET_DIR=target/device
ZIG_VERSION=0.17.1
DEVICE_RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Cforce-unwind-tables=no \
-Crelocation-model=static -Zlocation-detail=none -Zfmt-debug=none -Ctarget-feature=+crt-static \
-Cllvm-args=-inline-threshold=0 -Cllvm-args=-machine-outliner-reruns=3"

# ensure_zig CACHE: zig from PyPI's ziglang wheel, under CACHE/zig; prints the linker wrapper.
ensure_zig() {
    local dir=$1/zig-$ZIG_VERSION
    if [ ! -x "$dir/ziglang/zig" ]; then
        say "installing zig $ZIG_VERSION (the armv7 musl C library and linker)"
        ensure_packages python3-pip:pip3
        rm -rf "$dir.tmp"
        pip3 install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir.tmp" \
            "ziglang==$ZIG_VERSION" >&2 || die "pip install ziglang==$ZIG_VERSION failed"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    # rustc speaks to a gcc; zig's clang takes the same words except these, and it warns of
    # the library directory rustc names in nightly's sysroot, where no armv7 musl std exists.
    cat >"$dir/cc-arm-linux-musleabihf" <<EOF
#!/bin/sh
skip=
for a in "\$@"; do
    shift
    if [ -n "\$skip" ]; then skip=; [ -d "\$a" ] && set -- "\$@" -L "\$a"; continue; fi
    case \$a in
    -lgcc_s | -lgcc_eh | --target=*) ;;
    -L) skip=1 ;;
    -L*) [ -d "\${a#-L}" ] && set -- "\$@" "\$a" ;;
    *) set -- "\$@" "\$a" ;;
    esac
done
exec "$dir/ziglang/zig" cc -target arm-linux-musleabihf "\$@"
EOF
    chmod +x "$dir/cc-arm-linux-musleabihf"
    echo "$dir/cc-arm-linux-musleabihf"
}

# device_help_blob REPO FILE: the help texts of every command, for a build without the `help`
# feature (OVL_HELP_BLOB; src/help.rs).
device_help_blob() {
    (cd "$1" && cargo run --quiet --manifest-path xtask/Cargo.toml --release -- help-blob "$2") ||
        die "xtask help-blob failed"
}

# device_build REPO TARGET: builds ovl for TARGET; sets DEVICE_BIN to the stripped binary.
# OVL_DEVICE_FEATURES=LIST adds cargo features (`timing`, for bench/boards.sh --steps); such a
# build goes to a target directory of its own, so that it never stands in for the shipped one.
device_build() {
    local repo=$1 target=$2 flags cache sc blob tdir=$DEVICE_TARGET_DIR features=() tag
    cache=${OVL_CACHE:-$repo/.cache}
    # The features as a directory name's part: "timing,x y" is "timing-x-y".
    tag=${OVL_DEVICE_FEATURES:-}
    tag=${tag//[^a-z0-9_]/-}
    if [ -n "$tag" ]; then
        features=(--features "$OVL_DEVICE_FEATURES")
        tdir=$DEVICE_TARGET_DIR-$tag
    fi
    if [ -n "${OVL_STABLE_DEVICE:-}" ]; then
        ensure_rust_target "$target"
        tdir=target${tag:+/stable-$tag}
        (cd "$repo" && cargo build --quiet --release --target "$target" --bin ovl "${features[@]}" \
            --target-dir "$tdir") ||
            die "cargo build --target $target failed"
        DEVICE_BIN=$repo/$tdir/$target/release/ovl
        return
    fi
    ensure_nightly rust-src
    flags=$DEVICE_RUSTFLAGS
    case $target in
    aarch64-unknown-linux-musl | x86_64-unknown-linux-musl)
        # aarch64: atomics as LL/SC in line, not calls that pick LSE at run time (1.7 KB of
        # start-up code in std); ovl has no contended atomics, and v8.0 cores have no LSE.
        # rustc warns that the feature is unstable: expected.
        [ "$target" = aarch64-unknown-linux-musl ] && flags="$flags -Ctarget-feature=-outline-atomics"
        ensure_rust "$target"
        sc=$(rustc --print sysroot)/lib/rustlib/$target/lib/self-contained
        [ -f "$sc/crt1.o" ] || die "no musl crt objects in $sc (rustup target add $target)"
        flags="$flags -Clink-self-contained=no -L$sc -Zpre-link-arg=$sc/crt1.o \
-Zpre-link-arg=$sc/crti.o -Zpre-link-arg=$sc/crtbegin.o -Clink-arg=$sc/crtend.o \
-Clink-arg=$sc/crtn.o -Clink-arg=--icf=all"
        ;;
    armv7-unknown-linux-musleabihf)
        flags="$flags -Clink-self-contained=no -Clinker=$(ensure_zig "$cache")"
        ;;
    *) die "no device build for $target" ;;
    esac
    # Without clap's help renderer: the help texts are rendered here by the host's clap
    # (src/help.rs); the file is replaced only when they changed, so as not to rebuild.
    blob=$repo/$tdir/help.blob
    mkdir -p "$repo/$tdir"
    device_help_blob "$repo" "$blob.new"
    if cmp -s "$blob.new" "$blob"; then rm -f "$blob.new"; else mv "$blob.new" "$blob"; fi
    (cd "$repo" && OVL_HELP_BLOB=$blob RUSTFLAGS=$flags \
        cargo "+$NIGHTLY" build --quiet --release --target "$target" \
        --bin ovl --no-default-features "${features[@]}" -Zbuild-std=std,panic_abort \
        -Zbuild-std-features=optimize_for_size --target-dir "$tdir") ||
        die "device build for $target failed ($NIGHTLY -Zbuild-std; OVL_STABLE_DEVICE=1 builds with stable)"
    DEVICE_BIN=$repo/$tdir/$target/release/ovl
}

# device_check_help REPO BIN: BIN (a device build that runs here) prints for every command
# and alias name, with --help and with -h, what the host build's clap prints for --help
# (BIN's texts were rendered at build time: src/help.rs).
device_check_help() {
    local repo=$1 bin=$2 dir host name cmd
    dir=$(mktemp -d)
    (cd "$repo" && cargo build --quiet --bin ovl) || die "cargo build (host) failed"
    host=$repo/target/debug/ovl
    mkdir "$dir/host" || die "cannot make $dir/host"
    for name in ovlctl firstboot factoryreset jffs2reset sysupgrade; do
        ln -s "$bin" "$dir/$name" && ln -s "$host" "$dir/host/$name" ||
            die "cannot link in $dir"
    done
    check() {
        local want got flag
        want=$("$dir/host/$1" "${@:2}" --help 2>&1) || die "host $1 ${*:2} --help failed"
        for flag in --help -h; do
            got=$("$dir/$1" "${@:2}" "$flag" 2>&1) || die "device $1 ${*:2} $flag failed"
            [ "$got" = "$want" ] || {
                diff <(echo "$want") <(echo "$got") >&2
                die "device build's help for '$1 ${*:2} $flag' differs from the host's (above)"
            }
        done
    }
    check ovlctl
    for cmd in $("$host" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z-]*\) .*/\1/p'); do
        [ "$cmd" = help ] || check ovlctl "$cmd"
    done
    for name in firstboot factoryreset jffs2reset sysupgrade; do check "$name"; done
    rm -rf "$dir"
}
