#!/usr/bin/env python3
"""Boots each emulated board several times with ovl and with the busybox-shell baseline (same
kernel, same ROM, same flash or disk) and prints medians: kernel start -> preinit start,
preinit start -> exec of init (with and without module loading), the end of module loading
-> exec of init, total to the shell, the ratio ovl/baseline, and the binary size per target.
Figures only: nothing passes or fails.

With --against REV (bench/boards.sh builds REV's ovl as $CACHE/against/REV/BOARD.ovl), a
third kind boots a copy of the board's initramfs with that binary as /init, and each row also
gives the ratio new/old. The kinds boot in turn (one of each, then again), so that a change in
the host's load falls on all of them alike.

With --steps (bench/boards.sh builds this tree's ovl with the cargo feature `timing` as
$CACHE/steps/BOARD.ovl), a kind "steps" boots that binary, and its sub-step timings (kmsg
lines "preinit: timing: label=us; ...") are printed as medians under each step, with the
step's remainder as "(rest)". Its timing code makes it a little slower than "ovl"; the split
is what it is for.

Usage: bench/boards.py [--boots N] [--no-reset] [--against REV] [--steps] [BOARD...]
       (run by bench/boards.sh after the build)
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("OVL_CACHE", os.path.join(REPO, ".cache"))
BOOT_TIMEOUT = 300


def boot(board, storage, initrd=None, line=None, append=None):
    """One boot: returns the console text up to the power-off. `line` is typed at the shell
    (default: the status, then power-off); it must end by powering off."""
    cmd = [os.path.join(REPO, "qemu-arm/boot.sh"), board, "--storage", storage]
    if initrd:
        cmd += ["--initrd", initrd]
    if append:
        cmd += ["--append", append]
    line = line or "dmesg -n 1; ovlctl status --json; cat /run/baseline.times; sync; poweroff -f"
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()

    def reader():
        for chunk in iter(lambda: p.stdout.read1(4096), b""):
            out.extend(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    start = time.time()
    sent = False
    while p.poll() is None and time.time() - start < BOOT_TIMEOUT:
        if not sent and b"shell on the console" in out:
            p.stdin.write(line.encode() + b"\n")
            p.stdin.flush()
            sent = True
        time.sleep(0.05)
    if p.poll() is None:
        p.kill()
        p.wait()
        tail = out.decode(errors="replace").splitlines()[-20:]
        sys.exit(f"{board}: no power-off within {BOOT_TIMEOUT}s; console tail:\n" + "\n".join(tail))
    t.join(5)
    return out.decode(errors="replace")


def measure(text, baseline):
    """Seconds: (kernel->preinit, preinit->exec, preinit->exec without modules, total to shell,
    end of module loading -> exec). The baseline's module loading ends after its API mounts,
    so its two "without" figures are one."""
    shell = float(re.search(r"shell ready ([0-9.]+)s", text).group(1))
    if baseline:
        m = re.search(r"baseline: start ([0-9.]+)s modules-done ([0-9.]+)s exec ([0-9.]+)s", text)
        t0, t1, t2 = (float(x) for x in m.groups())
        return t0, t2 - t0, t2 - t1, shell, t2 - t1
    line = next(l for l in text.splitlines() if l.lstrip().startswith('{"mode"'))
    st = json.loads(line[line.index("{"):])
    assert st["mode"] == "persistent", st
    steps = {s["step"]: s["us"] for s in st["steps"]}
    total = st["times"]["preinit_us"] / 1e6
    without = total - steps.get("modules", 0) / 1e6
    return (st["times"]["kernel_to_preinit_us"] / 1e6, total, without, shell,
            without - steps.get("setup", 0) / 1e6)


# The initramfs compressions by their magic bytes, and how to undo each (the names are
# qemu-arm/boards.sh's, whose initramfs_compress makes them again).
COMPRESSIONS = [
    (b"\x1f\x8b", "gzip", ["gzip", "-dc"]),
    (b"\xfd7zXZ\x00", "xz", ["xz", "-dc"]),
    (b"\x5d\x00\x00", "lzma", ["xz", "--format=lzma", "-dc"]),
    (b"BZh", "bzip2", ["bzip2", "-dc"]),
    (b"\x02\x21\x4c\x18", "lz4", ["lz4", "-dc"]),
    (b"\x28\xb5\x2f\xfd", "zstd", ["zstd", "-dc", "-q"]),
    (b"\x89LZO", "lzo", ["lzop", "-dc"]),
    (b"070701", "none", ["cat"]),
]


def compression_of(path):
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, name, undo in COMPRESSIONS:
        if head.startswith(magic):
            return name, undo
    sys.exit(f"{path}: unknown initramfs compression (first bytes {head.hex()})")


def unpack(initrd, into):
    """The initramfs's files, as root made them (device nodes too), in `into`."""
    _, undo = compression_of(initrd)
    with open(initrd, "rb") as f:
        cpio = subprocess.run(undo, stdin=f, stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["cpio", "-id", "--quiet"], input=cpio, cwd=into, check=True)


def init_size(initrd):
    """The size of /init in an initramfs: the binary the board boots."""
    with tempfile.TemporaryDirectory(prefix="ovl-bench") as d:
        unpack(initrd, d)
        return os.path.getsize(os.path.join(d, "init"))


def with_init(initrd, binary, out):
    """A copy of `initrd` whose /init is `binary`, packed and compressed as `initrd` is."""
    name, _ = compression_of(initrd)
    with tempfile.TemporaryDirectory(prefix="ovl-bench") as d:
        unpack(initrd, d)
        shutil.copy(binary, os.path.join(d, "init"))
        os.chmod(os.path.join(d, "init"), 0o755)
        pack = ("find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | "
                f'{{ . "{REPO}/qemu-arm/boards.sh"; initramfs_compress {name}; }} > "{out}.new"')
        subprocess.run(["bash", "-c", pack], cwd=d, check=True)
    os.replace(out + ".new", out)


def kinds_of(board, against, steps=False):
    """(kind, initramfs) to boot: ovl, the old revision's ovl, ovl with timings, the baseline."""
    img = os.path.join(CACHE, "images", board)
    kinds = [("ovl", os.path.join(img, "initramfs.img"))]

    def repacked(kind, d):
        """ovl's initramfs with /init replaced by the board's binary built into `d`."""
        out = os.path.join(d, f"{board}.initramfs.img")
        with_init(kinds[0][1], os.path.join(d, f"{board}.ovl"), out)
        kinds.append((kind, out))

    if steps:
        repacked("steps", os.path.join(CACHE, "steps"))
    if against:
        repacked(against, os.path.join(CACHE, "against", against))
    baseline = os.path.join(img, "initramfs-baseline.img")
    if os.path.exists(baseline):
        kinds.append(("baseline", baseline))
    return kinds


# dmesg's timing lines, each printed at the start of a line after a mark, so that neither the
# echo of the typed line (where the mark is not at a line's start) nor kmsg lines the console
# shows itself are taken twice.
SPANS_CMD = "dmesg | sed -n 's/.*preinit: timing: /OVLSPANS /p'"
TIMING = re.compile(r"^\r?OVLSPANS (.*)$", re.M)


def spans_of(text):
    """The sub-step timings one boot logged, as [(label, µs)] in their order."""
    spans = []
    for m in TIMING.finditer(text):
        for part in m.group(1).strip().split("; "):
            label, _, us = part.rpartition("=")
            if label and us.isdigit():
                spans.append((label, int(us)))
    return spans


def span_medians(boots):
    """Median µs per label over the boots, in the first boot's order; under each "[step]" its
    "(rest)": the step's time that none of the spans before it (since the last step) covers. A
    label starting with "- " is a part of the next span to end (src/timing.rs): shown indented
    below it, and not counted twice."""
    order, per = [], {}
    for spans in boots:
        for label, us in spans:
            if label not in per:
                order.append(label)
                per[label] = []
            per[label].append(us)
    rows, inside, parts = [], [], []
    for label in order:
        med = statistics.median(per[label])
        if label.startswith("- "):
            parts.append(("      " + label[2:], med))
            continue
        if label.startswith("["):
            rows.append((label, med))
            rows.append(("  (rest)", med - sum(inside)))
            inside = []
        else:
            rows.append(("  " + label, med))
            inside.append(med)
        rows += parts
        parts = []
    return rows


def run_board(board, n, against=None, steps=False):
    """Per kind: (first boot, medians of n later boots, init's size), and the sub-step rows of
    the "steps" kind. The kinds boot in turn, each on its own copy of the pristine storage."""
    img = os.path.join(CACHE, "images", board)
    kinds = kinds_of(board, against, steps)
    timings = []
    with tempfile.TemporaryDirectory(prefix="ovl-bench") as d:
        storage = {}
        for kind, _ in kinds:
            storage[kind] = os.path.join(d, f"{kind}.img")
            shutil.copy(os.path.join(img, "storage.img"), storage[kind])
        first, later = {}, {k: [] for k, _ in kinds}
        for i in range(n + 1):
            for kind, initrd in kinds:
                # The timings are in kmsg, which the console may not show at its log level.
                line = (f"{SPANS_CMD}; dmesg -n 1; ovlctl status --json; sync; poweroff -f"
                        if kind == "steps" else None)
                text = boot(board, storage[kind], initrd, line=line)
                m = measure(text, kind == "baseline")
                if i == 0:
                    first[kind] = m
                else:
                    later[kind].append(m)
                    if kind == "steps":
                        timings.append(spans_of(text))
    return {kind: (first[kind], [statistics.median(x[i] for x in later[kind]) for i in range(5)],
                   init_size(initrd)) for kind, initrd in kinds}, span_medians(timings)


def status_of(text):
    line = next(l for l in text.splitlines() if l.lstrip().startswith('{"mode"'))
    return json.loads(line[line.index("{"):])


NOR_PARTS = "cmdlinepart.mtdparts=0.flash:64m(bank0)ro,16m(rootfs),{}(rootfs_data)"


def shell_ready(text):
    m = re.search(r"shell ready ([0-9.]+)s after the kernel started", text)
    return float(m.group(1)) if m else float("nan")


def reset_figures(board="qemu-aarch64-nor"):
    """A mounted reset at two fill levels, then for a fully used rootfs_data of 16 and of
    48 MiB: the reset of the unmounted partition, with deferral (old nodes obsoleted, JFFS2
    erases them after the mount) and without (--full-erase), the next boot's preinit and
    first boot, and preinit on a partition carrying only a mark (what a cut reset or
    OpenWrt's 0xDEADC0DE leaves: preinit runs the obsoleting pass itself)."""
    img = os.path.join(CACHE, "images", board)
    print(f"\n{board}: factory reset (TCG: erases are memory writes, far faster than NOR's ~0.34 s/MiB)")
    for mib in (8, 40):
        with tempfile.TemporaryDirectory(prefix="ovl-bench") as d:
            storage = os.path.join(d, "storage.img")
            shutil.copy(os.path.join(img, "storage.img"), storage)
            fill = (f"dmesg -n 1; mkdir -p /root/fill; i=0; while [ $i -lt {mib * 4} ]; do "
                    f"dd if=/dev/urandom of=/root/fill/f$i bs=64k count=4 2>/dev/null; i=$((i+1)); done; sync")
            out = boot(board, storage, line=fill + "; ovlctl reset -y; sync; poweroff -f")
            m = re.search(r"removed (\d+) entries from \S+ in ([0-9.]+) s", out)
            print(f"  {mib:2d} MiB used, mounted reset: {m.group(1)} entries in {float(m.group(2)) * 1000:.0f} ms")
            # The ROM's init ran `ovlctl firstboot` before the shell: its line is in the log.
            out = boot(board, storage, line="dmesg -n 1; ovlctl status --json; poweroff -f")
            st = status_of(out)
            fb = re.search(r"first boot complete in ([0-9.]+) s", out)
            print(f"     next boot: preinit {st['times']['preinit_us'] / 1000:.0f} ms (upper emptied: "
                  f"{st['first_boot']['cleared_at_boot']}), run-once scripts and record "
                  f"{float(fb.group(1)) * 1000 if fb else float('nan'):.0f} ms")
    print(f"\n{board}: unmounted reset of a fully used rootfs_data (random data to ENOSPC)")
    wait_erased = ("dmesg -n 1; ovlctl status --json; read -r t0 _ < /proc/uptime; "
                   "while ovlctl status --json | grep -q '\"erase_blocks\":[1-9]'; do sleep 0.2; done; "
                   "read -r t1 _ < /proc/uptime; echo ERASED $t0 $t1; poweroff -f")
    for mib in (16, 48):
        parts = NOR_PARTS.format(f"{mib}m")
        with tempfile.TemporaryDirectory(prefix="ovl-bench") as d:
            full = os.path.join(d, "full.img")
            storage = os.path.join(d, "storage.img")
            shutil.copy(os.path.join(img, "storage.img"), full)
            boot(board, full, append=parts,
                 line="dmesg -n 1; dd if=/dev/urandom of=/root/fill bs=64k 2>/dev/null; sync; poweroff -f")
            for kind, flag in (("deferred", ""), ("full erase", " --full-erase")):
                shutil.copy(full, storage)
                out = boot(board, storage, append=parts + " ovl.failsafe",
                           line=f"dmesg -n 1; ovlctl reset -y{flag}; poweroff -f")
                m = re.search(r"(/dev/mtd\d+: .*|erased \d+ blocks .*) in ([0-9.]+) s", out)
                what = m.group(1) if m else "?"
                took = float(m.group(2)) * 1000 if m else float("nan")
                out = boot(board, storage, append=parts, line=wait_erased)
                st = status_of(out)
                e = re.search(r"ERASED ([0-9.]+) ([0-9.]+)", out)
                bg = (float(e.group(2)) - float(e.group(1))) * 1000 if e else float("nan")
                print(f"  {mib:2d} MiB, {kind:10s}: reset {took:6.0f} ms ({what})")
                print(f"  {'':13s} next boot: preinit {st['times']['preinit_us'] / 1000:4.0f} ms, shell ready "
                      f"(first boot done) {shell_ready(out):.2f} s after the kernel started, blocks left to "
                      f"JFFS2 at the shell {st['waiting'].get('erase_blocks')}, all erased {bg:.0f} ms later")
            # Only a mark on the old nodes: preinit itself runs the pass before it mounts.
            shutil.copy(full, storage)
            with open(storage, "r+b") as f:
                f.seek(16 << 20)
                f.write(bytes([0xDE, 0xAD, 0xC0, 0xDE]))
            out = boot(board, storage, append=parts)
            st = status_of(out)
            steps = {x["step"]: x["us"] for x in st["steps"]}
            print(f"  {mib:2d} MiB, mark only: preinit {st['times']['preinit_us'] / 1000:.0f} ms, of which "
                  f"the pass (upper step) {steps.get('upper', 0) / 1000:.0f} ms")
    print("  (real NOR: a full erase costs ~0.34 s/MiB, 5.4 s for 16 MiB and 16.3 s for 48 MiB, which a "
          "preinit erasing before the mount would wait for; a deferred reset reads the partition and "
          "rewrites 12 bytes per old node)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=5, help="later boots per board and kind (default 5)")
    ap.add_argument("boards", nargs="*", default=["qemu-aarch64-nor", "qemu-aarch64-nor-ubi", "qemu-x86_64-disk"])
    ap.add_argument("--no-reset", action="store_true", help="skip the factory reset figures")
    ap.add_argument("--against", metavar="REV", help="also boot REV's ovl (built by bench/boards.sh)")
    ap.add_argument("--steps", action="store_true",
                    help="also boot ovl built with sub-step timings (built by bench/boards.sh)")
    a = ap.parse_args()
    ms = lambda s: f"{s * 1000:6.0f} ms"
    for board in a.boards:
        print(f"\n{board}: medians of {a.boots} boots after the first (TCG, 2 cores)", flush=True)
        r, rows = run_board(board, a.boots, a.against, a.steps)
        cols = ["kernel->preinit", "preinit->exec", "  without modules", "total to shell", "modules done->exec"]
        for kind, (first, _, _) in r.items():
            print(f"  {kind:9s} first boot: preinit->exec {ms(first[1]).strip()}, "
                  f"without modules {ms(first[2]).strip()}, modules done->exec {ms(first[4]).strip()}")
        ratios = [("ovl", "baseline")] + ([("ovl", a.against)] if a.against else [])
        for i, c in enumerate(cols):
            row = f"  {c:18s}" + "".join(f"  {k} {ms(v[1][i])}" for k, v in r.items())
            for new, old in ratios:
                if new in r and old in r and r[old][1][i] > 0:
                    row += f"  {new}/{old} {r[new][1][i] / r[old][1][i]:.2f}"
            print(row)
        print(f"  {'/init (bytes)':18s}" + "".join(f"  {k} {v[2]:9d}" for k, v in r.items() if k != "baseline")
              + ("  (baseline: a busybox shell script)" if "baseline" in r else ""))
        if rows:
            print(f"  sub-steps of the \"steps\" kind (medians of {a.boots} later boots, ms; "
                  "[step] is the boot's own step time):")
            for label, us in rows:
                print(f"    {label:44s} {us / 1000:7.1f}")
    if not a.no_reset and "qemu-aarch64-nor" in a.boards:
        reset_figures()
    print("\nstatic binary size (stripped):")
    for t in ("aarch64-unknown-linux-musl", "x86_64-unknown-linux-musl", "armv7-unknown-linux-musleabihf",
              "armv7-unknown-linux-gnueabihf"):
        # The device build (scripts/device.sh) first, else a plain release build.
        for p in (os.path.join(REPO, "target", "device", t, "release", "ovl"),
                  os.path.join(REPO, "target", t, "release", "ovl")):
            if os.path.exists(p):
                print(f"  {t:32s} {os.path.getsize(p):8d} bytes")
                break


if __name__ == "__main__":
    main()
