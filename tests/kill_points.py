"""SIGKILL a command at seeded points of its progress: the shared loop of the resume-after-kill tests."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence


def kill_at_points(command: Sequence[str], env: Mapping[str, str], progress: Callable[[], int],
                   points: Sequence[int], rng: random.Random, *, max_delay: float) -> int:
    """Start `command` once per point k; kill it once progress() exceeds k, after a random delay of
    up to `max_delay` seconds (so a kill can land mid-unit). Returns how many runs were killed
    (a run may finish before its kill; each waits at most 300 s for its point)."""
    kills = 0
    for k in points:
        proc = subprocess.Popen(list(command), env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while progress() <= k and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    return kills
