#!/usr/bin/env python3
"""Hot instructions of one JIT-compiled guest function, from a `perf record` of a run
with FLINT_WASM_PROFILER=perfmap.

    FLINT_WASM_PROFILER=perfmap perf record -g -o perf.data flint run ... -- ...
    benchmarks/tools/jit-annotate.py perf.data /tmp/perf-PID.map 'decode_typed::h60d8' [TOP]

`perf` names the guest's functions from the perf map wasmtime writes but cannot show
their code. Their code is in the compiled component flint keeps in its cache
($XDG_CACHE_HOME/flint/compiled, or ~/.cache/flint/compiled; FLINT_COMPILED overrides):
an ELF whose symbols are the component's functions. This script counts the samples per
instruction of the function (found by NAME, a substring of its name in the perf map,
such as its hash), finds the same function in a cached component (same size, at the
same offset from `__wasm_call_ctors`), and prints its disassembly around the TOP
(default 20) hottest instructions with the count of each. Needs `perf` and `objdump`.
"""
import collections
import glob
import os
import re
import subprocess
import sys


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    data, perf_map, name = sys.argv[1], sys.argv[2], sys.argv[3]
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    funcs = []
    with open(perf_map) as f:
        for line in f:
            addr, size, fname = line.rstrip("\n").split(" ", 2)
            funcs.append((int(addr, 16), int(size, 16), fname))
    matches = [f for f in funcs if name in f[2]]
    if not matches:
        sys.exit(f"no function named like {name!r} in {perf_map}")
    ips = [
        int(ip, 16)
        for ip in subprocess.run(
            ["perf", "script", "-i", data, "-G", "-F", "ip"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
    ]

    def samples(f):
        return collections.Counter(ip - f[0] for ip in ips if f[0] <= ip < f[0] + f[1])

    # Of the functions so named, the one with the most samples.
    counts, (start, size, fname) = max(((samples(f), f) for f in matches),
                                       key=lambda c: sum(c[0].values()))
    print(f"{fname} ({size:#x} bytes)")
    print(f"{sum(counts.values())} of {len(ips)} samples")
    ctors = [f[0] for f in funcs if "__wasm_call_ctors" in f[2] and f[0] <= start]
    if not ctors:
        sys.exit("no __wasm_call_ctors before the function: is it a guest function?")
    offset = start - max(ctors)
    cache = os.environ.get("FLINT_COMPILED") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flint", "compiled"
    )
    for path in glob.glob(os.path.join(cache, "*.cwasm")):
        syms = subprocess.run(["objdump", "-t", path], capture_output=True, text=True).stdout
        base = [l for l in syms.splitlines() if "__wasm_call_ctors" in l]
        if not base:
            continue
        want = int(base[0].split()[0], 16) + offset
        hit = [
            l for l in syms.splitlines()
            if l.startswith(f"{want:016x}") and int(l.split()[4], 16) == size
        ]
        if hit:
            annotate(path, want, size, counts, top)
            return
    sys.exit(f"the function is in no compiled component under {cache}")


def annotate(path, start, size, counts, top):
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", f"--start-address={start}",
         f"--stop-address={start + size}", path],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = []
    for line in dis.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s*(.*)", line)
        if m:
            rows.append((int(m.group(1), 16) - start, m.group(2)))
    index = {off: i for i, (off, _) in enumerate(rows)}
    shown = set()
    for off, _ in counts.most_common(top):
        if off in index:
            i = index[off]
            shown.update(range(max(0, i - 6), min(len(rows), i + 3)))
    last = -2
    for i in sorted(shown):
        if i != last + 1:
            print("   ...")
        off, ins = rows[i]
        print(f"{counts.get(off, 0):6d} {off:6x}  {ins}")
        last = i


if __name__ == "__main__":
    main()
