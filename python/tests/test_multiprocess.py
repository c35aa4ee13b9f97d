"""Python beside other processes: a Table keeps its version while the CLI replaces the
table from another process; Store.refresh() and table() then give the new version."""

import subprocess

import numpy as np

import embstore


def test_table_keeps_its_version_while_the_cli_replaces_it(tmp_path, cli):
    db = str(tmp_path / "db")
    for v in (1, 2):
        np.save(tmp_path / f"v{v}.npy", np.full((64, 8), float(v), np.float32))
    subprocess.run([cli, "import", "--db", db, "--table", "t", "--from", str(tmp_path / "v1.npy")],
                   check=True, capture_output=True)
    store = embstore.Store(db, create=False)
    old = store.table("t")
    assert old.version == 1
    subprocess.run([cli, "import", "--db", db, "--table", "t", "--from", str(tmp_path / "v2.npy"),
                    "--replace"], check=True, capture_output=True)
    # The held snapshot reads version 1 still.
    assert old.version == 1
    assert np.all(old.embedding_bag(np.arange(64), [0], mode="sum") == 64.0)
    store.refresh()
    assert store.info("t").version == 2
    new = store.table("t")
    assert new.version == 2
    assert np.all(new.embedding_bag(np.arange(64), [0], mode="sum") == 128.0)
    # The CLI reads what Python wrote, too.
    np.save(tmp_path / "p.npy", np.full((2, 2), 3.0, np.float32))
    store.import_file("p", str(tmp_path / "p.npy"))
    out = subprocess.run([cli, "query", "--db", db, "--table", "p", "--indices", "0,1",
                          "--offsets", "0", "--mode", "sum"], check=True, capture_output=True,
                         text=True).stdout
    assert out.split() == ["6", "6"]
