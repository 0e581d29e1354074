"""Reading py-spy's raw (collapsed) stacks of the daemon: where its threads spend the GIL.

bench/peers.py --profile DIR records the twistd process with ``py-spy record --format raw
--threads --nolineno --gil`` during each load phase. Each line of such a file is
``thread (TID): NAME;frame;...;leaf COUNT`` with frames as ``function (file)``. Only
samples holding the GIL are kept, so a thread's share of ``rate x seconds`` is how much
of the phase it ran Python (at most one thread at a time can), and the shares below
say where that time went: by leaf function (self), by the leaf's package, and by
inclusive frame (the frames that hold nearly every sample are left out).
"""

import collections
from pathlib import Path


def _package(frame: str) -> str:
    """'twisted/web' for 'Request.process (twisted/web/server.py)', 'asn1crypto' for asn1crypto/core.py."""
    where = frame[frame.rfind("(") + 1:].rstrip(")")
    parts = where.split("/")
    if len(parts) == 1:
        return where
    return "/".join(parts[:2]) if parts[0] in ("twisted", "scepproxyd") and len(parts) > 2 else parts[0]


def parse(raw: Path):
    """{thread name: [(frames, count), ...]} from a raw py-spy file."""
    threads = collections.defaultdict(list)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack.startswith("thread ("):
            continue
        frames = stack.split(";")
        name = frames[0].partition("): ")[2] or frames[0]
        threads[name].append((frames[1:], int(count)))
    return threads


def summarize(raw: Path, rate: int, seconds: float, top: int = 10) -> str:
    """A text summary per thread: GIL share of the phase, then self, package and inclusive shares."""
    if not raw.exists() or raw.stat().st_size == 0:
        return f"  (no samples in {raw})"
    out = []
    threads = parse(raw)
    for name, stacks in sorted(threads.items(), key=lambda item: -sum(n for _, n in item[1])):
        total = sum(n for _, n in stacks)
        leaves, packages, inclusive = collections.Counter(), collections.Counter(), collections.Counter()
        for frames, n in stacks:
            if frames:
                leaves[frames[-1]] += n
                packages[_package(frames[-1])] += n
            for frame in set(frames):
                inclusive[frame] += n
        out.append(f"  thread {name}: {total} samples holding the GIL, ~{100 * total / (rate * seconds):.0f}%"
                   f" of the {seconds:.1f} s phase")
        out.append("    by package of the leaf frame: " + ", ".join(
            f"{pkg} {100 * n / total:.0f}%" for pkg, n in packages.most_common(8)))
        out.append("    self (leaf):")
        out.extend(f"      {100 * n / total:5.1f}%  {frame}" for frame, n in leaves.most_common(top))
        out.append("    inclusive (frames under 90%):")
        shown = [(f, n) for f, n in inclusive.most_common() if n / total < 0.90][:top * 2]
        out.extend(f"      {100 * n / total:5.1f}%  {frame}" for frame, n in shown)
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    # .venv/bin/python bench/_peers_profile.py RAW_FILE SECONDS [RATE]
    print(summarize(Path(sys.argv[1]), int(sys.argv[3]) if len(sys.argv) > 3 else 200, float(sys.argv[2])))
