"""embstore.Cluster against a real cluster on loopback: etcd (Debian's etcd-server) on
ephemeral 127.0.0.1 ports with a temporary data dir, and `embstore serve --cluster` nodes
(the CLI: the `cli` fixture, EMBSTORE_CLI), tables published with `embstore publish`.

Every golden case (bags and batched bags) through the cluster gives the local Store's
result: MAX bit for bit, SUM and MEAN within float rounding (the shards' partial sums are
added in another order), and torch's within its tolerance. Every dtype. Bad requests fail
with the local exceptions and messages. A new version published under the Cluster is
followed by its watch. A node SIGKILLed while queries run costs no wrong and no failed
answer (retries counted); with both replicas of a shard gone, ServerError('UNAVAILABLE')
names the shards. Bad endpoints and an unreachable etcd fail cleanly."""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

import embstore
from conftest import GOLDEN, put_table
from test_golden import BAG_CASES, BATCHED_CASES, EB, arr, bag_args, check, norm
from test_serve import Server, outcome, same

ETCD_WAIT = 30.0  # seconds for etcd to answer
DTYPES = ("f32", "f16", "bf16", "int8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """etcd on two free loopback ports, its data in `tmp`."""

    def __init__(self, tmp):
        if shutil.which("etcd") is None:
            pytest.fail("etcd is not installed (Debian: apt-get install etcd-server)")
        client, peer = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{client}"
        p = f"http://127.0.0.1:{peer}"
        self.log = open(tmp / "etcd.log", "wb")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "pytest", "--data-dir", str(tmp / "etcd-data"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
             "--initial-cluster", f"pytest={p}", "--logger", "zap", "--log-outputs", "stderr"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + ETCD_WAIT
        while True:
            try:
                embstore.Cluster(self.endpoint, etcd_timeout=1.0).close()
                return
            except embstore.ServerError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"etcd did not answer within {ETCD_WAIT} s: "
                                f"{(tmp / 'etcd.log').read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()


def node(cli, tmp, etcd, name, prefix="/embstore/"):
    return Server(cli, tmp / f"node-{name}", tmp, "--cluster", etcd.endpoint, "--node", name,
                  "--cluster-prefix", prefix, "--lease-ttl", "2", "--threads", "2",
                  metrics=False)


def publish(cli, etcd, table, path, shards, replicas=2, prefix="/embstore/", dtype=None):
    cmd = [cli, "publish", "--cluster", etcd.endpoint, "--cluster-prefix", prefix, "--table",
           table, "--from", str(path), "--shards", str(shards), "--replicas", str(replicas)]
    if dtype is not None:
        cmd += ["--dtype", dtype]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def cluster(cli, tmp_path_factory):
    """etcd, 3 nodes, every golden table in up to 3 shards x 2 replicas, and a 300 x 24 table
    in each dtype (5 shards; NaNs in a row but for int8, a row of -0.0); a local Store with
    the same tables (and r_plain: r.npy as f32); a Cluster client."""
    tmp = tmp_path_factory.mktemp("cluster")
    etcd = Etcd(tmp)
    nodes = [node(cli, tmp, etcd, f"n{i}") for i in range(3)]
    store = embstore.Store(str(tmp / "local"))
    for name, t in EB["tables"].items():
        store.import_file(name, str(GOLDEN / t["file"]))
        rows = store.table(name).shape[0]
        publish(cli, etcd, name, GOLDEN / t["file"], min(3, max(1, rows)))
    rows = np.random.default_rng(11).standard_normal((300, 24)).astype(np.float32)
    rows[40] = -0.0
    np.save(tmp / "r.npy", rows)
    put_table(store, tmp, "r_plain", rows)
    with_nans = rows.copy()
    with_nans[17, ::3] = np.nan  # not for int8, which cannot hold them
    np.save(tmp / "rn.npy", with_nans)
    for dtype in DTYPES:
        src = rows if dtype == "int8" else with_nans
        put_table(store, tmp, f"r_{dtype}", src, dtype=dtype)
        publish(cli, etcd, f"r_{dtype}", tmp / ("r.npy" if dtype == "int8" else "rn.npy"), 5,
                dtype=dtype)
    c = embstore.Cluster(etcd.endpoint, timeout=30)
    yield store, c, etcd, tmp
    c.close()
    for n in nodes:
        n.stop()
    etcd.stop()


def close_to_local(got, want, mode):
    if mode == "max":
        same(got, want)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.all(np.abs(got[ok] - want[ok]) <= 1e-5 + 1e-5 * np.abs(want[ok]))


def test_cluster_has_the_tables(cluster):
    store, c, _, _ = cluster
    assert c.tables() == sorted(list(EB["tables"]) + [f"r_{d}" for d in DTYPES])
    assert sorted(c.nodes()) == ["n0", "n1", "n2"]
    t = c.table("r_int8")
    assert t.shape == (300, 24) and t.dtype == "int8" and t.version >= 1
    m = c.route("r_int8")
    assert len(m["shards"]) == 5 and all(len(s[2]) == 2 for s in m["shards"])
    assert "ClusterTable('r_int8'" in repr(t)


@pytest.mark.parametrize("case", BAG_CASES, ids=[c["name"] for c in BAG_CASES])
def test_embedding_bag_goldens(cluster, case):
    store, c, _, _ = cluster
    inp, offs, psw = bag_args(case)
    kwargs = dict(max_norm=case["max_norm"], norm_type=norm(case["norm_type"]), mode=case["mode"],
                  per_sample_weights=psw, include_last_offset=case["include_last_offset"],
                  padding_idx=case["padding_idx"])
    got = c.table(case["table"]).embedding_bag(inp, offs, **kwargs)
    close_to_local(got, store.table(case["table"]).embedding_bag(inp, offs, **kwargs),
                   case["mode"])
    check(got, case)


@pytest.mark.parametrize("case", BATCHED_CASES, ids=[c["name"] for c in BATCHED_CASES])
def test_batched_goldens(cluster, case):
    store, c, _, _ = cluster
    args = (arr(case["indices"], case["index_dtype"], case["indices_shape"]),
            arr(case["ends"], case["ends_dtype"], case["ends_shape"]))
    kwargs = dict(per_sample_weights=arr(case["weights"], np.float32, case["indices_shape"]),
                  mode=case["mode"], padding_idx=case["padding_idx"], max_norm=case["max_norm"],
                  norm_type=norm(case["norm_type"]))
    got = c.table(case["table"]).batched_embedding_bag(*args, **kwargs)
    close_to_local(got, store.table(case["table"]).batched_embedding_bag(*args, **kwargs),
                   case["mode"])
    check(got, case)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_random_requests(cluster, dtype):
    store, c, _, _ = cluster
    local, remote = store.table(f"r_{dtype}"), c.table(f"r_{dtype}")
    rng = np.random.default_rng(hash(dtype) % 1000)
    n = 0
    for mode in ("sum", "mean", "max"):
        for trial in range(12):
            ids = rng.integers(0, 300, int(rng.integers(0, 60)))
            ids[rng.random(ids.size) < 0.1] = 17  # NaN entries
            ids[rng.random(ids.size) < 0.1] = 40  # -0.0 rows: ties at zero
            offsets = np.sort(rng.integers(0, ids.size + 1, int(rng.integers(1, 9))))
            offsets[0] = 0
            kwargs = dict(mode=mode)
            if trial % 3 == 1:
                kwargs["padding_idx"] = int(ids[0]) if ids.size else 5
            if trial % 4 == 2:
                kwargs["max_norm"] = 1.25
            if trial % 2:  # weighted mean and max too (extensions of torch)
                kwargs["per_sample_weights"] = rng.standard_normal(ids.size).astype(np.float32)
            close_to_local(remote.embedding_bag(ids, offsets, **kwargs),
                           local.embedding_bag(ids, offsets, **kwargs), mode)
            n += 1
    assert n == 36


def test_bad_requests_fail_as_local_ones(cluster):
    store, c, _, _ = cluster
    local, remote = store.table("r_f32"), c.table("r_f32")  # 300 rows of 24
    bag_cases = [
        dict(input=[1, 2], offsets=[0], mode="median"),
        dict(input=[1.5, 2.0], offsets=[0]),
        dict(input=np.zeros((2, 2, 2), np.int64)),
        dict(input=[1, 2], offsets=[1, 0]),
        dict(input=[1, 2], offsets=[0, 5]),
        dict(input=[1, 2]),
        dict(input=[1, 2], offsets=[0], per_sample_weights=[1.0]),
        dict(input=[1, 2], offsets=[0], max_norm=-1.0),
        dict(input=[1, 2], offsets=[0], padding_idx=300),
        dict(input=[1, 2], offsets=[0], padding_idx=1.5),
        dict(input="12", offsets=[0]),
        dict(input=None),
        dict(input=[1, 300], offsets=[0]),         # IndexError, the id named
        dict(input=[-1], offsets=[0]),
        dict(input=[1, 2], offsets=[0], out=np.zeros((1, 24), np.float64)),
        dict(input=[1, 2], offsets=[0], out=np.zeros((2, 24), np.float32)),
    ]
    for kwargs in bag_cases:
        want = outcome(lambda: local.embedding_bag(**kwargs))
        assert want[0] is not None, kwargs
        assert outcome(lambda: remote.embedding_bag(**kwargs)) == want, kwargs
    for args in (([1, 2], [[1]]), ([[1, 2]], [[5]]), ([[1, 999]], [[1]]), ([[1, 2]], [[1, 0]])):
        want = outcome(lambda: local.batched_embedding_bag(*args))
        assert want[0] is not None, args
        assert outcome(lambda: remote.batched_embedding_bag(*args)) == want, args
    with pytest.raises(IndexError, match=r"indices\[1\] = 300 is out of range for table 'r_f32'"):
        remote.embedding_bag([1, 300], offsets=[0])
    # `out` given and right: written in place
    out = np.zeros((1, 24), np.float32)
    assert remote.embedding_bag([1, 2], [0], mode="sum", out=out) is out
    close_to_local(out, local.embedding_bag([1, 2], [0], mode="sum"), "sum")
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        c.table("nope")


def test_bad_endpoints_and_an_unreachable_etcd():
    with pytest.raises(ValueError, match="TLS to etcd is not supported yet"):
        embstore.Cluster("https://127.0.0.1:2379")
    with pytest.raises(ValueError, match="not an etcd endpoint"):
        embstore.Cluster("127.0.0.1:2379")
    with pytest.raises(ValueError, match="must be http://HOST:PORT"):
        embstore.Cluster("http://nowhere")
    with pytest.raises(ValueError, match="no etcd endpoint"):
        embstore.Cluster(",")
    with pytest.raises(TypeError):
        embstore.Cluster(2379)
    with pytest.raises(ValueError, match="attempt_timeout must be > 0"):
        embstore.Cluster("http://127.0.0.1:1", attempt_timeout=0)
    t0 = time.monotonic()
    with pytest.raises(embstore.ServerError) as e:
        embstore.Cluster(f"http://127.0.0.1:{free_port()}", etcd_timeout=0.5)
    assert e.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and "etcd" in str(e.value)
    assert time.monotonic() - t0 < 10


def test_a_new_version_is_followed_by_the_watch(cli, cluster):
    store, c, etcd, tmp = cluster
    t = c.table("r_f32")
    before = t.version
    values = np.full((50, 24), 3.0, np.float32)
    np.save(tmp / "new.npy", values)
    publish(cli, etcd, "r_f32_next", tmp / "new.npy", 2)
    publish(cli, etcd, "r_f32_next", tmp / "r.npy", 3)   # version 2 of another table
    deadline = time.monotonic() + 20
    while "r_f32_next" not in c.tables() or c.route("r_f32_next")["version"] != 2:
        assert time.monotonic() < deadline, "the watch did not bring version 2"
        time.sleep(0.05)
    nt = c.table("r_f32_next")
    close_to_local(nt.embedding_bag([3, 299], [0], mode="sum"),
                   store.table("r_plain").embedding_bag([3, 299], [0], mode="sum"), "sum")
    assert nt.version == 2 and nt.shape == (300, 24)
    assert t.version == before
    subprocess.run([cli, "rollback", "--cluster", etcd.endpoint, "--table", "r_f32_next"],
                   check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 20
    while c.route("r_f32_next")["version"] != 1:
        assert time.monotonic() < deadline, "the watch did not bring the rollback"
        time.sleep(0.05)
    got = nt.embedding_bag([3, 4], [0], mode="sum")  # now 50 rows of 3.0
    assert nt.version == 1 and np.array_equal(got, np.full((1, 24), 6.0, np.float32))


def test_a_killed_node_costs_no_answer_and_both_replicas_gone_is_unavailable(cli, cluster):
    """Its own 3 nodes under another prefix in the same etcd."""
    store, _, etcd, tmp = cluster
    prefix = "/kill-test/"
    nodes = {f"k{i}": node(cli, tmp, etcd, f"k{i}", prefix) for i in range(3)}
    publish(cli, etcd, "r", tmp / "r.npy", 6, prefix=prefix)
    local = store.table("r_plain")
    c = embstore.Cluster(etcd.endpoint, prefix=prefix, timeout=20, attempt_timeout=0.5)
    try:
        t = c.table("r")
        rng = np.random.default_rng(5)
        requests = []
        for _ in range(64):
            ids = rng.integers(0, 300, 40)
            requests.append((ids, np.arange(0, 40, 5), ("sum", "max")[len(requests) % 2]))
        want = [local.embedding_bag(i, o, mode=m) for i, o, m in requests]
        wrong, failed, done = [], [], [0]
        stop = threading.Event()

        def run():
            k = 0
            while not stop.is_set() and k < 5000:
                i, o, m = requests[k % len(requests)]
                try:
                    got = t.embedding_bag(i, o, mode=m)
                    if m == "max":
                        if not np.array_equal(got.view(np.uint32),
                                              want[k % len(requests)].view(np.uint32)):
                            wrong.append(k)
                    elif not np.allclose(got, want[k % len(requests)], rtol=1e-5, atol=1e-5,
                                         equal_nan=True):
                        wrong.append(k)
                except Exception as e:  # noqa: BLE001 - counted
                    failed.append(repr(e))
                k += 1
                done[0] += 1

        threads = [threading.Thread(target=run) for _ in range(2)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 30
        while done[0] < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        nodes["k1"].proc.send_signal(signal.SIGKILL)
        nodes["k1"].proc.wait(timeout=30)
        at_kill = done[0]
        while done[0] < at_kill + 300 and time.monotonic() < deadline + 30:
            time.sleep(0.01)
        stop.set()
        for th in threads:
            th.join(timeout=60)
        assert done[0] >= at_kill + 300, "queries stalled after the kill"
        assert wrong == [] and failed == [], (wrong[:5], failed[:5])
        st = c.stats()
        assert st["requests"] >= done[0] and st["sub_requests"] > st["requests"]
        # a node SIGKILLed: its lease lasts up to 2 s, so the first queries after the kill
        # tried it, failed, and went to the next replica
        assert st["retries"] > 0, st
        # Now a second node: some shard has both replicas gone.
        nodes["k2"].proc.send_signal(signal.SIGKILL)
        nodes["k2"].proc.wait(timeout=30)
        m = c.route("r")
        lost = [s for s, (_, _, holders, _) in enumerate(m["shards"])
                if set(holders) <= {"k1", "k2"}]
        assert lost, m["shards"]
        with pytest.raises(embstore.ServerError) as e:
            t.embedding_bag(np.arange(300), [0], mode="sum")
        assert e.value.code == "UNAVAILABLE"
        for s in lost:
            assert f"shard {s} (" in e.value.details, e.value.details
        assert "no replica answered" in e.value.details
    finally:
        c.close()
        for n in nodes.values():
            n.stop(check=False)


def test_rows_other_than_the_manifests_are_refused(cli, cluster):
    """A node holding other rows under a shard's name (planted while it was down): its
    replies are refused and the shard asked of the other replica; with that one gone,
    UNAVAILABLE says why. Its own 2 nodes under another prefix."""
    store, _, etcd, tmp = cluster
    prefix = "/planted/"
    nodes = {f"p{i}": node(cli, tmp, etcd, f"p{i}", prefix) for i in range(2)}
    publish(cli, etcd, "r", tmp / "r.npy", 2, prefix=prefix)
    local = store.table("r_plain")
    c = None
    try:
        with embstore.Cluster(etcd.endpoint, prefix=prefix) as probe:
            begin, end, holders, _ = probe.route("r")["shards"][0]
        first, second = holders
        nodes[first].stop()
        np.save(tmp / "planted.npy", np.full((end - begin, 24), 7.0, np.float32))
        r = subprocess.run([cli, "import", "--db", str(tmp / f"node-{first}"), "--table",
                            "r.v1.s0", "--from", str(tmp / "planted.npy"), "--replace"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        nodes[first] = node(cli, tmp, etcd, first, prefix)
        c = embstore.Cluster(etcd.endpoint, prefix=prefix, attempt_timeout=2.0)
        deadline = time.monotonic() + 20
        while first not in c.nodes():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t = c.table("r")
        ids, offs = np.array([begin, 0, end - 1, 299]), np.array([0, 2])
        want = local.embedding_bag(ids, offs, mode="sum")
        for _ in range(10):
            close_to_local(t.embedding_bag(ids, offs, mode="sum"), want, "sum")
        st = c.stats()
        assert st["mismatched_replies"] == 10 and st["retries"] >= 10, st
        nodes[second].proc.send_signal(signal.SIGKILL)
        nodes[second].proc.wait(timeout=30)
        with pytest.raises(embstore.ServerError) as e:
            t.embedding_bag(ids, offs, mode="sum")
        assert e.value.code == "UNAVAILABLE"
        assert f"shard 0 ({first}: rows of another version" in e.value.details, e.value.details
    finally:
        if c is not None:
            c.close()
        for n in nodes.values():
            n.stop(check=False)
