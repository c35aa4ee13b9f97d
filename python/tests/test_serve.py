"""embstore.Client against the real `embstore serve` (the CLI: the `cli` fixture, EMBSTORE_CLI),
started here on 127.0.0.1 with ephemeral ports: every golden case through gRPC gives the local
Store's result bit for bit; bad requests fail with the local exception types and messages;
unknown tables and versions; threads; deadlines; --max-inflight; message limits; a version
published by `embstore import --replace` while queries run; TLS and mutual TLS with
certificates made here by the openssl CLI; health and metrics; SIGTERM exits 0."""

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

import embstore
from conftest import GOLDEN, put_table
from test_golden import (BAG_CASES, BATCHED_CASES, EB, EDGES, FM, arr, bag_args, check, norm)

START_WAIT = 30.0  # seconds for the server to print its listening lines
STOP_WAIT = 30.0   # seconds for SIGTERM to stop it (it drains requests in flight)

LISTEN = re.compile(r"^embstore serve: listening on (\S+):(\d+)$")
METRICS = re.compile(r"^embstore serve: metrics on (http://\S+/metrics)$")


class Server:
    """`embstore serve --db DIR --listen 127.0.0.1:0 ...` as a subprocess."""

    def __init__(self, cli, db, tmp_path, *args, metrics=True):
        self.stderr_path = tmp_path / f"serve-{os.getpid()}-{time.monotonic_ns()}.stderr"
        cmd = [cli, "serve", "--db", str(db), "--listen", "127.0.0.1:0", *args]
        if metrics:
            cmd += ["--metrics", "127.0.0.1:0"]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.address = self.metrics_url = None
        deadline = time.monotonic() + START_WAIT
        while self.address is None or (metrics and self.metrics_url is None):
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
            if line is None:  # EOF, or no line in time
                self.stop(check=False)
                pytest.fail(f"`{' '.join(cmd)}` printed no listening line within {START_WAIT} s "
                            f"(exit {self.proc.returncode}); stderr:\n{self.stderr()}")
            if m := LISTEN.match(line):
                assert m.group(1) == "127.0.0.1", line
                self.port = int(m.group(2))
                assert self.port > 0, line
                self.address = f"127.0.0.1:{self.port}"
            elif m := METRICS.match(line):
                self.metrics_url = m.group(1)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def client(self, **kwargs) -> embstore.Client:
        return embstore.Client(self.address, **kwargs)

    def stop(self, check=True):
        """SIGTERM, then SIGKILL after STOP_WAIT s; with check, the exit code must be 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_WAIT)
                if check:
                    pytest.fail(f"embstore serve did not stop within {STOP_WAIT} s of SIGTERM")
        self._stderr.close()
        if check:
            assert self.proc.returncode == 0, (
                f"embstore serve exited {self.proc.returncode} on SIGTERM; stderr:\n{self.stderr()}")


@pytest.fixture
def serve(cli, tmp_path):
    """serve(db, *args, metrics=True) starts a server; all are stopped (SIGTERM) at the end."""
    servers = []

    def start(db, *args, metrics=True):
        s = Server(cli, db, tmp_path, *args, metrics=metrics)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def same(got, want):
    """Bit for bit: dtype, shape and every float's bits (the sign of zero, NaNs)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.float32
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), np.max(np.abs(got - want))


# --- a server over the golden tables (one for the module) -------------------------------

DTYPES = ("f32", "f16", "bf16", "int8")


@pytest.fixture(scope="module")
def golden(cli, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-golden")
    store = embstore.Store(str(tmp / "db"))
    for name, t in {**EB["tables"], **FM["tables"]}.items():
        store.import_file(name, str(GOLDEN / t["file"]))
    put_table(store, tmp, "edges", np.array(EDGES["rows"], dtype=np.float32))
    rows = np.random.default_rng(7).standard_normal((300, 24)).astype(np.float32)
    for dtype in DTYPES:
        put_table(store, tmp, f"r_{dtype}", rows, dtype=dtype)
    server = Server(cli, tmp / "db", tmp)
    client = server.client(timeout=60)
    yield store, server, client
    client.close()
    server.stop()


def test_goldens_cover_what_they_should():
    # what the parametrized cases below go through, so that none of it can silently vanish
    assert {c["mode"] for c in BAG_CASES} == {"sum", "mean", "max"}
    assert any(c["per_sample_weights"] is not None for c in BAG_CASES)
    assert any(c["include_last_offset"] for c in BAG_CASES)
    assert any(c["padding_idx"] is not None for c in BAG_CASES)
    assert any(c["max_norm"] is not None for c in BAG_CASES)
    assert any(len(c["indices_shape"]) == 2 for c in BAG_CASES)
    assert {c["index_dtype"] for c in BAG_CASES} == {"int32", "int64"}
    assert len(BATCHED_CASES) > 0 and len(FM["cases"]) == 13


@pytest.mark.parametrize("case", BAG_CASES, ids=[c["name"] for c in BAG_CASES])
def test_embedding_bag_goldens(golden, case):
    store, _, client = golden
    inp, offs, psw = bag_args(case)
    kwargs = dict(max_norm=case["max_norm"], norm_type=norm(case["norm_type"]), mode=case["mode"],
                  per_sample_weights=psw, include_last_offset=case["include_last_offset"],
                  padding_idx=case["padding_idx"])
    local = store.table(case["table"])
    remote = client.table(case["table"])
    got = remote.embedding_bag(inp, offs, **kwargs)
    same(got, local.embedding_bag(inp, offs, **kwargs))
    check(got, case)
    assert remote.version == local.version


@pytest.mark.parametrize("case", BATCHED_CASES, ids=[c["name"] for c in BATCHED_CASES])
def test_batched_goldens(golden, case):
    store, _, client = golden
    args = (arr(case["indices"], case["index_dtype"], case["indices_shape"]),
            arr(case["ends"], case["ends_dtype"], case["ends_shape"]))
    kwargs = dict(per_sample_weights=arr(case["weights"], np.float32, case["indices_shape"]),
                  mode=case["mode"], padding_idx=case["padding_idx"], max_norm=case["max_norm"],
                  norm_type=norm(case["norm_type"]))
    got = client.table(case["table"]).batched_embedding_bag(*args, **kwargs)
    same(got, store.table(case["table"]).batched_embedding_bag(*args, **kwargs))
    check(got, case)


@pytest.mark.parametrize("i", range(len(EDGES["cases"])))
def test_norm_type_edges(golden, i):
    store, _, client = golden
    case = EDGES["cases"][i]
    args = (np.array(case["indices"]), np.array(case["offsets"]))
    kwargs = dict(mode="sum", max_norm=case["max_norm"], norm_type=case["norm_type"])
    same(client.table("edges").embedding_bag(*args, **kwargs),
         store.table("edges").embedding_bag(*args, **kwargs))


@pytest.mark.parametrize("case", FM["cases"], ids=[c["name"] for c in FM["cases"]])
def test_fm_score(golden, case):
    store, _, client = golden
    ffm = case["model"] == "ffm"
    kwargs = dict(
        model=case["model"], vectors=case["vectors"], biases=case["biases"], bias=case["bias"],
        input=arr(case["indices"], case["index_dtype"], case["indices_shape"]),
        bag_ends=arr(case["ends"], case["ends_dtype"], case["ends_shape"]),
        per_sample_weights=arr(case["weights"], np.float32, case["indices_shape"]),
        fields=arr(case["fields"], np.int64, case["fields_shape"]) if ffm else None,
        num_fields=case["num_fields"] if ffm else 0)
    got = client.fm_score(**kwargs)
    same(got, embstore.fm_score(store, **kwargs))
    want = np.array(case["expected"], dtype=np.float32)
    assert np.all(np.abs(got - want) <= 1e-4 * (1 + np.abs(want)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype(golden, dtype):
    store, _, client = golden
    name = f"r_{dtype}"
    local, remote = store.table(name), client.table(name)
    assert remote.dtype == local.dtype == dtype
    assert remote.shape == local.shape == (300, 24)
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 300, 400)
    offs = np.sort(rng.choice(np.arange(1, 400), 30, replace=False))
    offs = np.concatenate([[0], offs]).astype(np.int64)
    w = rng.random(400).astype(np.float32)
    for kwargs in (dict(mode="sum"), dict(mode="mean"), dict(mode="max"),
                   dict(mode="sum", per_sample_weights=w), dict(mode="max", per_sample_weights=w),
                   dict(mode="mean", max_norm=1.5), dict(mode="sum", max_norm=2.0, norm_type=1.0),
                   dict(mode="sum", padding_idx=ids[3]), dict(mode="mean", include_last_offset=True)):
        same(remote.embedding_bag(ids, offs, **kwargs), local.embedding_bag(ids, offs, **kwargs))
    ids2 = ids.reshape(20, 20)
    ends = np.array([[4, 9, 19]] * 20)
    same(remote.batched_embedding_bag(ids2, ends, mode="mean"),
         local.batched_embedding_bag(ids2, ends, mode="mean"))


def test_inputs_as_the_local_table_takes_them(golden):
    store, _, client = golden
    local, remote = store.table("t_d8"), client.table("t_d8")
    ids, offs = [1, 2, 3, 4, 9], [0, 2]
    want = local.embedding_bag(ids, offs, mode="sum")
    for a, o in ((torch.tensor(ids), torch.tensor(offs)), (np.array(ids, np.int32), offs),
                 (tuple(ids), np.array(offs, np.uint8)),
                 (np.repeat(ids, 2)[::2], memoryview(np.array(offs, np.int64)))):
        same(remote.embedding_bag(a, o, mode="sum"), want)
    # float64 weights are converted; a tensor that requires grad is read through detach()
    w = np.linspace(0.5, 2.0, 5)
    same(remote.embedding_bag(ids, offs, mode="sum", per_sample_weights=w),
         local.embedding_bag(ids, offs, mode="sum", per_sample_weights=w))
    wt = torch.tensor(w, dtype=torch.float32, requires_grad=True)
    same(remote.embedding_bag(ids, offs, mode="mean", per_sample_weights=wt),
         local.embedding_bag(ids, offs, mode="mean", per_sample_weights=wt))
    # 2-D input, no offsets: B bags of N
    same(remote.embedding_bag(np.array([[1, 2], [3, 4]])), local.embedding_bag([[1, 2], [3, 4]]))
    # out=: written into and returned, as the local Table does
    out = np.full((2, 8), np.nan, np.float32)
    r = remote.embedding_bag(ids, offs, mode="sum", out=out)
    assert r is out
    same(out, want)
    tout = torch.zeros((2, 8))
    remote.embedding_bag(ids, offs, mode="sum", out=tout)
    same(tout.numpy(), want)
    # results are new, writable arrays
    got = remote.embedding_bag(ids, offs, mode="sum")
    assert got.flags.writeable and got.flags.c_contiguous and got.flags.owndata
    # empty: no bags
    same(remote.embedding_bag(np.zeros(0, np.int64), np.zeros(0, np.int64)),
         local.embedding_bag(np.zeros(0, np.int64), np.zeros(0, np.int64)))


def test_tables_and_info(golden):
    store, _, client = golden
    assert client.tables() == store.tables()
    for name in store.tables():
        local, remote = store.info(name), client.info(name)
        for a in ("name", "rows", "dim", "dtype", "version", "data_bytes", "row_stride",
                  "checksum", "source", "created"):
            assert getattr(remote, a) == getattr(local, a), (name, a)
        t = client.table(name)
        assert (t.name, t.shape, t.dtype, t.version) == (name, (local.rows, local.dim),
                                                         local.dtype, local.version)
        assert t.info == remote


# --- errors: the local package's types and messages -------------------------------------

def outcome(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - compared below
        return type(e), str(e)
    return None, None


def test_bad_requests_fail_as_local_ones(golden):
    store, _, client = golden
    local, remote = store.table("t_d8"), client.table("t_d8")  # 10 rows of 8
    bag_cases = [
        dict(input=[1, 2], offsets=[0], mode="median"),
        dict(input=[1.5, 2.0], offsets=[0]),
        dict(input=np.zeros((2, 2, 2), np.int64)),
        dict(input=[1, 2], offsets=[[0]]),
        dict(input=[1, 2], offsets=[1, 0]),
        dict(input=[1, 2], offsets=[0, 5]),
        dict(input=[1, 2]),                        # 1-D without offsets
        dict(input=[[1, 2]], offsets=[0]),         # 2-D with offsets
        dict(input=[1, 2], offsets=[0], per_sample_weights=[1.0]),
        dict(input=[1, 2], offsets=[0], per_sample_weights=[1, 2]),
        dict(input=[1, 2], offsets=[0], max_norm=-1.0),
        dict(input=[1, 2], offsets=[0], max_norm="big"),
        dict(input=[1, 2], offsets=[0], max_norm=1.0, norm_type=float("nan")),
        dict(input=[1, 2], offsets=[0], padding_idx=10),
        dict(input=[1, 2], offsets=[0], padding_idx=-11),
        dict(input=[1, 2], offsets=[0], padding_idx=1.5),
        dict(input=[1, 2], offsets=[0], padding_idx=2**64),
        dict(input="12", offsets=[0]),
        dict(input={"a": 1}, offsets=[0]),
        dict(input=None),
        dict(input=object(), offsets=[0]),
        dict(input=[[1, 2], [3]], offsets=[0]),
        dict(input=[1, 10], offsets=[0]),          # IndexError, the id named
        dict(input=[-1], offsets=[0]),
        dict(input=[2**62], offsets=[0]),
        dict(input=[1, 2], offsets=[0], out=np.zeros((1, 8), np.float64)),
        dict(input=[1, 2], offsets=[0], out=np.zeros((2, 8), np.float32)),
        dict(input=[1, 2], offsets=[0], out=np.zeros((1, 16), np.float32)[:, ::2]),
    ]
    for kwargs in bag_cases:
        want = outcome(lambda: local.embedding_bag(**kwargs))
        assert want[0] is not None, kwargs
        assert outcome(lambda: remote.embedding_bag(**kwargs)) == want, kwargs
    batched_cases = [
        ([1, 2], [[1]]), ([[1, 2]], [[1], [1]]), ([[1, 2]], [[5]]), ([[1, 99]], [[1]]),
        ([[1, 2]], [1]), ([[1, 2]], [[1, 0]]), ([[1.0, 2.0]], [[1]]),
    ]
    for args in batched_cases:
        want = outcome(lambda: local.batched_embedding_bag(*args))
        assert want[0] is not None, args
        assert outcome(lambda: remote.batched_embedding_bag(*args)) == want, args
    assert outcome(lambda: remote.batched_embedding_bag([[1, 2]], [[1]], mode="avg")) == \
        outcome(lambda: local.batched_embedding_bag([[1, 2]], [[1]], mode="avg"))
    # the types, spelled out (what test_errors.py requires of the local ones)
    with pytest.raises(IndexError, match=r"indices\[1\] = 10 is out of range for table 't_d8'"):
        remote.embedding_bag([1, 10], offsets=[0])
    with pytest.raises(ValueError, match="offsets"):
        remote.embedding_bag([1, 2], offsets=[1, 0])


def test_fm_score_errors_as_local(golden):
    store, _, client = golden
    good = dict(vectors="fm_vectors_k8", biases="fm_biases", input=[[1, 2, 3]], bag_ends=[[0, 2]])
    same(client.fm_score(**good), embstore.fm_score(store, **good))
    for change in (dict(model="svm"), dict(vectors="nope"), dict(biases="nope"),
                   dict(input=[[1, 200, 3]]), dict(bag_ends=[[0, 7]]),
                   dict(per_sample_weights=[[1.0]]), dict(input=[1, 2, 3]),
                   dict(model="ffm", fields=[[0]], num_fields=2)):
        kwargs = {**good, **change}
        want = outcome(lambda: embstore.fm_score(store, **kwargs))
        assert want[0] is not None, change
        assert outcome(lambda: client.fm_score(**kwargs)) == want, change


def test_unknown_table(golden):
    store, _, client = golden
    for fn in (lambda s: s.table("nope"), lambda s: s.info("nope")):
        with pytest.raises(KeyError) as local:
            fn(store)
        with pytest.raises(KeyError) as remote:
            fn(client)
        assert str(remote.value) == str(local.value)
        assert "unknown table 'nope'" in str(remote.value)


def test_pinned_versions(golden):
    store, _, client = golden
    current = store.info("t_d8").version
    pinned = client.table("t_d8", version=current)
    assert pinned.version == current and pinned.pinned == current
    same(pinned.embedding_bag([1, 2], [0]), store.table("t_d8").embedding_bag([1, 2], [0]))
    assert pinned.version == current
    absent = client.table("t_d8", version=current + 1000)
    with pytest.raises(KeyError, match=str(current + 1000)):
        absent.embedding_bag([1, 2], [0])
    with pytest.raises(KeyError, match=str(current + 1000)):
        absent.batched_embedding_bag([[1, 2]], [[1]])
    with pytest.raises(ValueError, match="version"):
        client.table("t_d8", version=0)


def test_health_and_metrics(golden):
    _, server, client = golden
    assert client.health() == "SERVING"
    client.table("t_d8").embedding_bag([1, 2, 3], [0])
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        assert r.status == 200
        body = r.read().decode()
    assert "# TYPE " in body
    assert re.search(r"^embstore_requests_total\{[^}]*\} [1-9]", body, re.M), body[:2000]


# --- concurrency, deadlines, limits -------------------------------------------------------

def test_threads_each_with_its_client_and_one_shared(golden):
    store, server, shared = golden
    w = store.table("t_d64")
    rows = np.load(GOLDEN / EB["tables"]["t_d64"]["file"])
    errors, done = [], []

    def worker(seed, client):
        r = np.random.default_rng(seed)
        t = client.table("t_d64")
        for _ in range(40):
            ids = r.integers(0, rows.shape[0], 60)
            offs = np.array([0, 7, 30])
            got = t.embedding_bag(ids, offs, mode="sum")
            want = w.embedding_bag(ids, offs, mode="sum")
            if not np.array_equal(got, want):
                errors.append(seed)
        done.append(seed)

    own = [server.client() for _ in range(6)]
    threads = [threading.Thread(target=worker, args=(s, own[s] if s < 6 else shared))
               for s in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for c in own:
        c.close()
    assert sorted(done) == list(range(10)) and errors == []


@pytest.fixture(scope="module")
def big(cli, tmp_path_factory):
    """A server over a 4096 x 256 table: requests that take a while."""
    tmp = tmp_path_factory.mktemp("serve-big")
    store = embstore.Store(str(tmp / "db"))
    put_table(store, tmp, "big", np.random.default_rng(5).standard_normal((4096, 256))
              .astype(np.float32))
    return store, tmp


def test_deadline_exceeded(big, serve):
    store, tmp = big
    server = serve(tmp / "db")
    n = 1 << 22  # 4M ids: tens of MB of wire, seconds of pooling on 2 cores
    ids = np.random.default_rng(1).integers(0, 4096, n)
    offs = np.arange(0, n, 64)
    with server.client(timeout=0.005) as client:
        table = client.table("big", timeout=30)
        t0 = time.monotonic()
        with pytest.raises(embstore.ServerError) as e:
            table.embedding_bag(ids, offs, mode="sum")
        assert time.monotonic() - t0 < 10
        assert e.value.code == "DEADLINE_EXCEEDED" and isinstance(e.value, OSError)
        assert "DEADLINE_EXCEEDED" in str(e.value)
        with pytest.raises(embstore.ServerError) as e:   # timeout=None: the client's
            table.embedding_bag(ids, offs, mode="sum", timeout=None)
        assert e.value.code == "DEADLINE_EXCEEDED"
        # the per-call timeout overrides the client's; the server is fine afterwards
        small = table.embedding_bag(ids[:640], offs[:10], mode="sum", timeout=60)
        same(small, store.table("big").embedding_bag(ids[:640], offs[:10], mode="sum"))
    with server.client() as client:   # the same request, given time, succeeds
        with pytest.raises(embstore.ServerError) as e:
            client.table("big").embedding_bag(ids, offs, mode="sum", timeout=0.005)
        assert e.value.code == "DEADLINE_EXCEEDED"
        same(client.table("big").embedding_bag(ids, offs, mode="sum", timeout=300),
             store.table("big").embedding_bag(ids, offs, mode="sum"))


def test_max_inflight_is_resource_exhausted(big, serve):
    store, tmp = big
    server = serve(tmp / "db", "--threads", "1", "--max-inflight", "1")
    n = 1 << 21
    ids = np.random.default_rng(2).integers(0, 4096, n)
    offs = np.arange(0, n, 32)
    want = store.table("big").embedding_bag(ids, offs, mode="sum")
    results, lock = [], threading.Lock()

    def worker():
        with server.client(timeout=300) as c:
            try:
                got = c.table("big").embedding_bag(ids, offs, mode="sum")
                with lock:
                    results.append(("ok", np.array_equal(got, want)))
            except embstore.ServerError as e:
                with lock:
                    results.append((e.code, str(e)))

    for _ in range(3):  # bounded: rounds of 6 concurrent requests
        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        if any(r[0] == "RESOURCE_EXHAUSTED" for r in results):
            break
    codes = [r[0] for r in results]
    assert "RESOURCE_EXHAUSTED" in codes, results
    assert set(codes) <= {"ok", "RESOURCE_EXHAUSTED"}, results
    assert all(r[1] is True for r in results if r[0] == "ok"), results
    assert any("max-inflight" in r[1] for r in results if r[0] == "RESOURCE_EXHAUSTED")


def test_large_messages(big, serve):
    store, tmp = big
    server = serve(tmp / "db")
    local = store.table("big")
    with server.client(timeout=120) as client:
        t = client.table("big")
        # a reply of 20 MB and a request of ~8 MB (past gRPC's 4 MB default both ways)
        ids = np.random.default_rng(3).integers(0, 4096, (20000, 1))
        same(t.embedding_bag(ids, mode="sum"), local.embedding_bag(ids, mode="sum"))
        ids = np.random.default_rng(4).integers(0, 4096, 1 << 22)
        offs = np.arange(0, 1 << 22, 4096)
        same(t.embedding_bag(ids, offs), local.embedding_bag(ids, offs))
    with server.client(max_message_bytes=4096) as client:
        t = client.table("big")
        with pytest.raises(embstore.ServerError) as e:     # the reply: 200 x 256 x 4 bytes
            t.embedding_bag(np.arange(200).reshape(200, 1))
        assert e.value.code == "RESOURCE_EXHAUSTED"
        with pytest.raises(embstore.ServerError) as e:     # the request
            t.embedding_bag(np.arange(4096) * 1000 + 1000000, [0])
        assert e.value.code == "RESOURCE_EXHAUSTED"
        same(t.embedding_bag([1, 2], [0]), local.embedding_bag([1, 2], [0]))
    # the server's own limit
    server2 = serve(tmp / "db", "--max-reply-bytes", "4096", metrics=False)
    with server2.client(timeout=60) as client:
        with pytest.raises(embstore.ServerError) as e:
            client.table("big").embedding_bag(np.arange(200).reshape(200, 1))
        assert e.value.code == "RESOURCE_EXHAUSTED"


def test_unreachable_server_is_unavailable(serve, tmp_path):
    embstore.Store(str(tmp_path / "db"))
    server = serve(tmp_path / "db")
    address = server.address
    server.stop()
    with embstore.Client(address, timeout=10) as client:
        with pytest.raises(embstore.ServerError) as e:
            client.tables()
    assert e.value.code == "UNAVAILABLE" and e.value.target == address


# --- a new version while queries run -----------------------------------------------------

def test_version_switch_while_queries_run(cli, serve, tmp_path):
    db = tmp_path / "db"
    rng = np.random.default_rng(9)
    v1, v2 = (rng.standard_normal((500, 16)).astype(np.float32) for _ in range(2))
    np.save(tmp_path / "v1.npy", v1)
    np.save(tmp_path / "v2.npy", v2)
    subprocess.run([cli, "import", "--db", str(db), "--table", "t", "--from",
                    str(tmp_path / "v1.npy")], check=True, capture_output=True, timeout=120)
    store = embstore.Store(str(db), create=False)
    local1 = store.table("t")
    assert local1.version == 1
    server = serve(db)
    ids = rng.integers(0, 500, 200)
    offs = np.arange(0, 200, 10)
    want = {1: local1.embedding_bag(ids, offs, mode="sum")}
    assert not np.array_equal(want[1], np.zeros_like(want[1]))
    seen, errors, stop = [], [], threading.Event()

    def query():
        with server.client(timeout=60) as c:
            t = c.table("t")
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    got = t.embedding_bag(ids, offs, mode="sum")
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
                    return
                seen.append((t.version, got))
                if t.version == 2:
                    # keep querying a little after the switch, then stop
                    if sum(1 for v, _ in seen if v == 2) >= 20:
                        return

    workers = [threading.Thread(target=query) for _ in range(3)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 30
    while not any(v == 1 for v, _ in seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    subprocess.run([cli, "import", "--db", str(db), "--table", "t", "--from",
                    str(tmp_path / "v2.npy"), "--replace"], check=True, capture_output=True,
                   timeout=120)
    store.refresh()
    local2 = store.table("t")
    assert local2.version == 2
    want[2] = local2.embedding_bag(ids, offs, mode="sum")
    assert not np.array_equal(want[1], want[2])
    for w in workers:
        w.join(timeout=90)
    stop.set()
    assert errors == []
    versions = [v for v, _ in seen]
    assert 1 in versions and 2 in versions, versions[-5:]
    for v, got in seen:  # every reply is exactly the version it names
        assert v in want, v
        same(got, want[v])
    # after the switch a fresh RemoteTable starts at the new version
    with server.client(timeout=60) as c:
        assert c.info("t").version == 2
        t = c.table("t")
        assert t.version == 2
        same(t.embedding_bag(ids, offs, mode="sum"), want[2])
        # a pinned old version: its values, named, or KeyError once the server let it go
        old = c.table("t", version=1)
        try:
            got = old.embedding_bag(ids, offs, mode="sum")
        except KeyError as e:
            assert "1" in str(e)
        else:
            assert old.version == 1
            same(got, want[1])


# --- TLS --------------------------------------------------------------------------------

def openssl(*args, cwd):
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("the TLS tests need the openssl CLI (Debian: openssl)")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=120)


def make_cert(d, name, ca=None):
    """A key and certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1): self-signed, or
    signed by `ca` (its name)."""
    san = ["-addext", "subjectAltName=IP:127.0.0.1"]
    if ca is None:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", *san, cwd=d)
        return
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", *san, cwd=d)
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=d)


@pytest.fixture
def small_db(tmp_path):
    store = embstore.Store(str(tmp_path / "db"))
    table = put_table(store, tmp_path, "t", np.arange(40, dtype=np.float32).reshape(10, 4))
    return tmp_path / "db", table


def test_tls(serve, small_db, tmp_path):
    db, local = small_db
    make_cert(tmp_path, "server")
    server = serve(db, "--tls-cert", str(tmp_path / "server.pem"),
                   "--tls-key", str(tmp_path / "server.key"))
    want = local.embedding_bag([1, 2, 3], [0, 1], mode="sum")
    pem = (tmp_path / "server.pem").read_bytes()
    for roots in (str(tmp_path / "server.pem"), tmp_path / "server.pem", pem, pem.decode()):
        with server.client(root_certificates=roots, timeout=30) as c:
            assert c.tables() == ["t"]
            same(c.table("t").embedding_bag([1, 2, 3], [0, 1], mode="sum"), want)
    # a plaintext client, or one trusting another certificate, does not get through
    with server.client(timeout=10) as c:
        with pytest.raises(embstore.ServerError) as e:
            c.tables()
        assert e.value.code == "UNAVAILABLE"
    make_cert(tmp_path, "other")
    with server.client(root_certificates=tmp_path / "other.pem", timeout=10) as c:
        with pytest.raises(embstore.ServerError) as e:
            c.tables()
        assert e.value.code == "UNAVAILABLE"


def test_mutual_tls(serve, small_db, tmp_path):
    db, local = small_db
    make_cert(tmp_path, "ca")
    make_cert(tmp_path, "server", ca="ca")
    make_cert(tmp_path, "client", ca="ca")
    make_cert(tmp_path, "stranger")
    server = serve(db, "--tls-cert", str(tmp_path / "server.pem"),
                   "--tls-key", str(tmp_path / "server.key"),
                   "--tls-client-ca", str(tmp_path / "ca.pem"))
    ca = tmp_path / "ca.pem"
    with server.client(root_certificates=ca, private_key=tmp_path / "client.key",
                       certificate_chain=tmp_path / "client.pem", timeout=30) as c:
        same(c.table("t").embedding_bag([[1, 2], [3, 4]], mode="max"),
             local.embedding_bag([[1, 2], [3, 4]], mode="max"))
    # no client certificate, or one the CA did not sign: refused
    for kwargs in ({}, dict(private_key=tmp_path / "stranger.key",
                            certificate_chain=tmp_path / "stranger.pem")):
        with server.client(root_certificates=ca, timeout=10, **kwargs) as c:
            with pytest.raises(embstore.ServerError) as e:
                c.tables()
            assert e.value.code in ("UNAVAILABLE", "UNAUTHENTICATED"), e.value
    with pytest.raises(ValueError, match="together"):
        embstore.Client(server.address, root_certificates=ca, private_key=tmp_path / "client.key")


def test_sigterm_drains_and_exits_0(big, serve):
    store, tmp = big
    server = serve(tmp / "db", metrics=False)
    n = 1 << 21
    ids = np.random.default_rng(6).integers(0, 4096, n)
    offs = np.arange(0, n, 64)
    result = {}

    def query():
        with server.client(timeout=300) as c:
            try:
                result["got"] = c.table("big").embedding_bag(ids, offs, mode="sum")
            except Exception as e:  # noqa: BLE001
                result["error"] = e

    t = threading.Thread(target=query)
    t.start()
    time.sleep(1.0)  # the request is on its way or running; SIGTERM lets it finish
    server.proc.send_signal(signal.SIGTERM)
    t.join(timeout=300)
    assert server.proc.wait(timeout=STOP_WAIT) == 0, server.stderr()
    if "got" in result:
        same(result["got"], store.table("big").embedding_bag(ids, offs, mode="sum"))
    else:  # it arrived after the listener closed: UNAVAILABLE, never a wrong answer
        assert isinstance(result.get("error"), embstore.ServerError), result
        assert result["error"].code == "UNAVAILABLE"
