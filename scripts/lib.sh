# Shared helpers for the project's scripts: installing what they need on a fresh machine.
# Sourced, not run.

say() { printf '[%s] %s\n' "${OVL_STEP:-ovl}" "$*" >&2; }
die() { printf '[%s] error: %s\n' "${OVL_STEP:-ovl}" "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "this needs root (loop devices, mounts, mount namespaces, apt-get): run it as root"
}

# ensure_packages PKG[:COMMAND] ...: installs the Debian packages whose command is missing
# (or, without :COMMAND, whose package is not installed).
ensure_packages() {
    local missing=() spec pkg cmd
    for spec in "$@"; do
        pkg=${spec%%:*}
        cmd=${spec#*:}
        if [ "$cmd" != "$spec" ]; then
            command -v "$cmd" >/dev/null 2>&1 && continue
        else
            [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == *"ok installed" ]] && continue
        fi
        missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

ensure_rust() {
    command -v cargo >/dev/null 2>&1 || die "cargo is missing: this machine kind ships rustup's toolchain"
    local have t
    have=$(rustup target list --installed 2>/dev/null || true)
    for t in "$@"; do
        grep -qx "$t" <<<"$have" && continue
        say "adding rust target $t"
        rustup target add "$t" >/dev/null || die "rustup target add $t failed"
    done
    for c in rustfmt clippy; do
        grep -q "^$c" <<<"$(rustup component list --installed 2>/dev/null)" && continue
        say "adding rust component $c"
        rustup component add "$c" >/dev/null || die "rustup component add $c failed"
    done
}

# The nightly the device build and the fuzz targets use, pinned: the sizes and timings in
# README.md were measured with it, and a later nightly may change -Zbuild-std or break it.
NIGHTLY=nightly-2026-05-20

# ensure_nightly [COMPONENT...]: $NIGHTLY and the components named, installed if missing.
ensure_nightly() {
    local c
    if ! rustup run "$NIGHTLY" rustc -V >/dev/null 2>&1; then
        say "installing the $NIGHTLY toolchain"
        rustup toolchain install "$NIGHTLY" --profile minimal >/dev/null ||
            die "rustup toolchain install $NIGHTLY failed"
    fi
    for c in "$@"; do
        grep -q "^$c" <<<"$(rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null)" && continue
        say "adding $c to $NIGHTLY"
        rustup component add "$c" --toolchain "$NIGHTLY" >/dev/null ||
            die "rustup component add $c --toolchain $NIGHTLY failed"
    done
}

# The host-side tools the privileged tests and image builders use.
ensure_host_tools() {
    ensure_packages squashfs-tools:mksquashfs e2fsprogs:mkfs.ext4 util-linux:losetup \
        gdisk:sgdisk busybox-static kmod:depmod cpio:cpio xz-utils:xz
    ensure_rust x86_64-unknown-linux-musl aarch64-unknown-linux-musl
}

# ensure_rust_target TARGET: the rust target, and for targets that link through a cross gcc
# (the glibc ones, linked statically as .cargo/config.toml says), that gcc and its C library.
ensure_rust_target() {
    case $1 in
    armv7-unknown-linux-gnueabihf)
        ensure_packages gcc-arm-linux-gnueabihf:arm-linux-gnueabihf-gcc libc6-dev-armhf-cross
        ;;
    esac
    ensure_rust "$1"
}
