"""Reading py-spy's raw (collapsed) stacks of the daemon: where its threads spend their samples.

bench/peers.py --profile DIR records the twistd process with
``py-spy record --format raw --threads --nolineno --nonblocking`` during each load
phase. Each line of such a file is ``frame;frame;...;leaf COUNT`` with frames as
``function (file)``; idle threads are not sampled, so a thread's share of
``rate x seconds`` is how busy it was. Stacks that run under Twisted's thread pool
are the DB thread's (all SQL runs there); the rest are the reactor's.
"""

import collections
from pathlib import Path


def _thread_of(frames) -> str:
    joined = ";".join(frames)
    if "threadpool" in joined or "_threads/" in joined or "_threads\\" in joined:
        return "db thread"
    return "reactor"


def _short(frame: str) -> str:
    frame = frame.strip()
    if frame.startswith("thread (") or frame.startswith("process "):
        return ""
    return frame


def summarize(raw: Path, rate: int, seconds: float, top: int = 10) -> str:
    """A text summary: per thread, busy share, top self (leaf) functions and top inclusive functions."""
    if not raw.exists() or raw.stat().st_size == 0:
        return f"  (no samples in {raw})"
    totals = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    inclusive = collections.defaultdict(collections.Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in (_short(x) for x in stack.split(";")) if f]
        if not frames:
            continue
        n = int(count)
        thread = _thread_of(frames)
        totals[thread] += n
        leaves[thread][frames[-1]] += n
        for frame in set(frames):
            inclusive[thread][frame] += n
    expected = rate * seconds
    out = []
    for thread in sorted(totals, key=lambda t: -totals[t]):
        total = totals[thread]
        out.append(f"  {thread}: {total} samples, busy ~{100 * total / expected:.0f}% of the phase")
        out.append("    self (leaf) share:")
        for frame, n in leaves[thread].most_common(top):
            out.append(f"      {100 * n / total:5.1f}%  {frame}")
        out.append("    inclusive share (frames under 95%):")
        shown = 0
        for frame, n in inclusive[thread].most_common():
            if n / total >= 0.95:
                continue
            out.append(f"      {100 * n / total:5.1f}%  {frame}")
            shown += 1
            if shown == top:
                break
    return "\n".join(out)
