#!/usr/bin/env python3
"""Boots each board with its initramfs compressed each way (same kernel, same cpio, same flash
or disk) in interleaved rounds and prints per compression: the initramfs's size, the median
time from kernel start to preinit start (ovlctl status: kernel_to_preinit_us), its ratio to
gzip, and the median span the kernel's log gives the unpacking (from "Trying to unpack rootfs
image as initramfs" to "Freeing initrd memory"; it runs beside other initcalls, so it is an
upper bound). Figures only: nothing passes or fails on time.

Usage: bench/initramfs.py --dir DIR [--boots N] [--comps "gzip lz4 ..."] BOARD...
(run by bench/initramfs.sh, which builds the boards and writes DIR/BOARD/initramfs.COMP)
"""
import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boards import CACHE, boot  # noqa: E402  (one way to boot a board and type at its shell)

LINE = "dmesg -n 1; ovlctl status --json; sync; poweroff -f"


def kernel_to_preinit(text):
    """Seconds from kernel start to preinit start, or None when no status came (no boot)."""
    for line in text.splitlines():
        if line.lstrip().startswith('{"mode"'):
            st = json.loads(line[line.index("{"):])
            return st["times"]["kernel_to_preinit_us"] / 1e6
    return None


def unpack_span(text):
    """Seconds between the kernel's unpacking messages on the console, or NaN."""
    a = re.search(r"\[\s*([0-9.]+)\] (?:Trying to unpack rootfs image as initramfs|Unpacking initramfs)", text)
    b = re.search(r"\[\s*([0-9.]+)\] Freeing initrd memory", text)
    return float(b.group(1)) - float(a.group(1)) if a and b else float("nan")


def run_board(board, comps, files, n):
    """({comp: [seconds, ...]}, {comp: [unpack seconds, ...]}); a compression whose boot gives
    no status is dropped (None)."""
    times = {c: [] for c in comps}
    unpack = {c: [] for c in comps}
    with tempfile.TemporaryDirectory(prefix="ovl-bench") as d:
        storage = os.path.join(d, "storage.img")
        shutil.copy(os.path.join(CACHE, "images", board, "storage.img"), storage)
        # The first boot formats or fills what it must; it is not counted.
        boot(board, storage, files[comps[0]], line=LINE)
        for r in range(n):
            # Each round boots every compression once, starting one further each round, so
            # the host's background load falls on all of them alike.
            order = comps[r % len(comps):] + comps[:r % len(comps)]
            for c in order:
                if times[c] is None:
                    continue
                text = boot(board, storage, files[c], line=LINE)
                t = kernel_to_preinit(text)
                if t is None:
                    tail = "\n    ".join(text.splitlines()[-8:])
                    print(f"  {c}: no status from the guest, dropped; console tail:\n    {tail}", flush=True)
                    times[c] = None
                    continue
                times[c].append(t)
                unpack[c].append(unpack_span(text))
            print(f"  round {r + 1}/{n} done", file=sys.stderr, flush=True)
    return times, unpack


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="DIR/BOARD/initramfs.COMP, and DIR/BOARD/initramfs.cpio")
    ap.add_argument("--boots", type=int, default=5, help="boots per board and compression (default 5)")
    ap.add_argument("--comps", default="gzip none bzip2 lzma xz lzo lz4 zstd")
    ap.add_argument("boards", nargs="+")
    a = ap.parse_args()
    comps = a.comps.split()
    summary = []
    for board in a.boards:
        files = {c: os.path.join(a.dir, board, f"initramfs.{c}") for c in comps}
        cpio = os.path.getsize(os.path.join(a.dir, board, "initramfs.cpio"))
        print(f"\n{board}: kernel start -> preinit start, medians of {a.boots} boots per compression "
              f"(interleaved rounds, after a first boot; TCG, 2 cores); cpio {cpio // 1024} KiB", flush=True)
        times, unpack = run_board(board, comps, files, a.boots)
        med = {c: statistics.median(v) for c, v in times.items() if v}
        print(f"  {'comp':6s} {'size':>10s} {'median':>9s} {'min':>7s} {'max':>7s}  /gzip  unpacking")
        for c in comps:
            size = f"{os.path.getsize(files[c]) // 1024:7d} KiB"
            if c not in med:
                print(f"  {c:6s} {size}   (did not boot)")
                continue
            ratio = f"{med[c] / med['gzip']:.2f}" if "gzip" in med else "-"
            print(f"  {c:6s} {size} {med[c] * 1000:6.0f} ms {min(times[c]) * 1000:4.0f} ms "
                  f"{max(times[c]) * 1000:4.0f} ms  {ratio:5s}  {statistics.median(unpack[c]) * 1000:5.0f} ms")
        if med:
            best = min(med, key=med.get)
            summary.append((board, best, med[best], med.get("gzip")))
    print("\nfastest per board (median kernel start -> preinit start):")
    for board, best, t, gz in summary:
        vs = f", gzip {gz * 1000:.0f} ms" if gz else ""
        print(f"  {board:22s} {best:6s} {t * 1000:5.0f} ms{vs}")


if __name__ == "__main__":
    main()
