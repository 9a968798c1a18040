#!/usr/bin/env bash
# scripts/check-docs.sh: makes the man pages and shell completions the images install
# (`xtask docs`, from ovl's clap definitions) and checks every one: each page renders with
# `man -l` and groff with no warning, has a NAME line whatis can read naming the page, and a
# DESCRIPTION; every page ovlctl(8) lists exists; each completion parses in its shell
# (bash -n, zsh -n, fish -n) and the bash and fish ones complete what they should. Also
# xtask's fmt and clippy (the root's lints do not reach it). Any problem fails naming the
# file. Run by test.sh; needs root the first time (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=docs
. scripts/lib.sh
ensure_packages man-db:man groff-base:groff zsh:zsh fish:fish

say "xtask: cargo fmt --check, cargo clippy"
cargo fmt --manifest-path xtask/Cargo.toml --check
cargo clippy --quiet --manifest-path xtask/Cargo.toml --all-targets -- -D warnings

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
say "generating man pages and completions (xtask docs)"
cargo run --quiet --manifest-path xtask/Cargo.toml --release -- docs "$out"

failed=0
bad() {
    printf '[%s] FAILED: %s\n' "$OVL_STEP" "$*" >&2
    failed=$((failed + 1))
}

man8=$out/man/man8
# What users type: the tool, the boot and the OpenWrt names the binary answers to.
pages="ovlctl preinit sysupgrade firstboot factoryreset jffs2reset"
if [ -f "$man8/ovlctl.8" ]; then
    # Each subcommand ovlctl(8) lists must have its page; and the list must not be empty.
    subs=$(sed -n 's/^ovlctl\\-\(.*\)(8)$/ovlctl-\1/p' "$man8/ovlctl.8" | sed 's/\\-/-/g')
    [ -n "$subs" ] || bad "ovlctl.8: lists no subcommands (no ovlctl-NAME(8) in SUBCOMMANDS)"
    for s in status reset sysupgrade check-board; do
        grep -qx "ovlctl-$s" <<<"$subs" || bad "ovlctl.8: does not list ovlctl-$s(8)"
    done
    pages="$pages $subs"
fi
for p in $pages; do
    [ -f "$man8/$p.8" ] || bad "$p.8: missing from xtask docs' output"
done
n=0
for f in "$man8"/*.8; do
    [ -e "$f" ] || { bad "no man pages in $man8"; break; }
    page=$(basename "$f")
    name=${page%.8}
    n=$((n + 1))
    # groff and man-db warn on stderr and still exit 0: any word there is a failure.
    if ! w=$(groff -ww -z -b -man "$f" 2>&1) || [ -n "$w" ]; then
        bad "$page: groff -ww warns: $w"
    fi
    if ! text=$(MANPAGER=cat MANWIDTH=80 man --warnings=w -l "$f" 2>"$out/man.err") ||
        [ -s "$out/man.err" ]; then
        bad "$page: man --warnings -l: $(cat "$out/man.err")"
    fi
    grep -q '^DESCRIPTION' <<<"$text" || bad "$page: man -l shows no DESCRIPTION"
    grep -q "^VERSION" <<<"$text" || bad "$page: man -l shows no VERSION"
    # whatis and apropos read the NAME line: `NAME - summary`, NAME the page's own.
    if ! what=$(lexgrog "$f" 2>&1); then
        bad "$page: lexgrog cannot read its NAME line: $what"
    elif ! grep -q "^$f: \"$name - ." <<<"$what"; then
        bad "$page: NAME line does not name $name: $what"
    fi
done
say "$n man pages rendered"

completed="ovlctl sysupgrade firstboot factoryreset jffs2reset"
for c in $completed; do
    f=$out/bash-completion/completions/$c
    if [ ! -f "$f" ]; then
        bad "bash completion $c: missing"
    elif ! e=$(bash -n "$f" 2>&1); then
        bad "bash completion $c: bash -n: $e"
    fi
    f=$out/zsh/site-functions/_$c
    if [ ! -f "$f" ]; then
        bad "zsh completion _$c: missing"
    elif ! e=$(zsh -n "$f" 2>&1); then
        bad "zsh completion _$c: zsh -n: $e"
    elif [ "$(head -n1 "$f")" != "#compdef $c" ]; then
        bad "zsh completion _$c: first line is not '#compdef $c'"
    fi
    f=$out/fish/vendor_completions.d/$c.fish
    if [ ! -f "$f" ]; then
        bad "fish completion $c.fish: missing"
    elif ! e=$(fish -n "$f" 2>&1); then
        bad "fish completion $c.fish: fish -n: $e"
    fi
done

# bash_complete NAME WORD...: what NAME's bash completion offers for the last WORD.
bash_complete() {
    local name=$1
    shift
    # shellcheck disable=SC2016 # expanded by the inner bash
    bash -c '. "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
        "_$1" "$1" "${@: -1}" "${@: -2:1}" && printf "%s\n" "${COMPREPLY[@]}"' \
        bash "$out/bash-completion/completions/$name" "$name" "$@" 2>&1
}
# A file that parses could still complete nothing: try one word each. grep reads all of the
# output (no -q): quitting at the first match would kill the writer with SIGPIPE, which
# pipefail counts as a failure, now and then.
bash_complete ovlctl ovlctl check-b | grep -x check-board >/dev/null ||
    bad "bash completion ovlctl: 'ovlctl check-b' does not complete to check-board"
bash_complete firstboot firstboot --full | grep -x -- --full-erase >/dev/null ||
    bad "bash completion firstboot: 'firstboot --full' does not complete to --full-erase"
fish -c "source $out/fish/vendor_completions.d/ovlctl.fish; complete -C 'ovlctl check-board --'" |
    grep -- '^--json' >/dev/null ||
    bad "fish completion ovlctl.fish: 'ovlctl check-board --' does not offer --json"
fish -c "source $out/fish/vendor_completions.d/sysupgrade.fish; complete -C 'sysupgrade -'" |
    grep -- '^-T' >/dev/null ||
    bad "fish completion sysupgrade.fish: 'sysupgrade -' does not offer -T"

[ "$failed" -eq 0 ] || die "$failed problems in the man pages or completions (above)"
say "man pages and completions: all checked"
