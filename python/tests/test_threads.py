"""Threads: several Python threads query one Table at once, and the GIL is released while
the engine works (a long background query does not stall the main thread)."""

import threading
import time

import numpy as np

from conftest import put_table


def test_many_threads_one_table(store, tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((500, 16)).astype(np.float32)
    table = put_table(store, tmp_path, "t", w)
    errors = []

    def worker(seed):
        r = np.random.default_rng(seed)
        for _ in range(200):
            ids = r.integers(0, 500, 40)
            offs = np.array([0, 10, 25])
            got = table.embedding_bag(ids, offs, mode="sum")
            want = np.stack([w[ids[0:10]].sum(0), w[ids[10:25]].sum(0), w[ids[25:]].sum(0)])
            if not np.allclose(got, want, atol=1e-4):
                errors.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_gil_is_released_during_a_query(store, tmp_path):
    table = put_table(store, tmp_path, "big", np.ones((4096, 256), dtype=np.float32))
    n = 1 << 23  # 8M lookups per call: tens to hundreds of ms, however many cores
    ids = np.random.default_rng(0).integers(0, 4096, n)
    offs = np.arange(0, n, 64)
    done = threading.Event()
    calls = []

    def background():
        # Calls until half a second has gone by, each one timed.
        t_end = time.perf_counter() + 0.5
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            table.embedding_bag(ids, offs, mode="sum")
            calls.append(time.perf_counter() - t0)
        done.set()

    t = threading.Thread(target=background)
    ticks, worst, last = 0, 0.0, None
    t.start()
    while not done.is_set():
        now = time.perf_counter()
        if last is not None:
            worst = max(worst, now - last)
        last = now
        ticks += 1
    t.join()
    # Holding the GIL through a call would freeze this loop for a whole call.
    shortest = min(calls)
    assert shortest > 0.01, calls
    assert worst < shortest / 2, (worst, calls)
    assert ticks > 1000
