"""Hypothesis: random add_file/remove_file sequences against a dict model keep refcounts exact."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfast.errors import NotFound
from p2pfast.repo import ObjectRow, Repo

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

KEYS = [b"a", b"b", b"a\x00", b"\xf0\x9f\x98\x80", b"../x", b""]
CIDS = [f"b3:{n:064x}" for n in range(4)]

Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, len(KEYS) - 1), st.integers(0, len(CIDS) - 1)),
        st.tuples(st.just("add_known"), st.integers(0, len(KEYS) - 1), st.integers(0, len(CIDS) - 1)),
        st.tuples(st.just("remove"), st.integers(0, len(KEYS) - 1), st.just(0)),
    ),
    max_size=30,
)


def check(repo: Repo, model: dict[bytes, str]) -> None:
    counts = Counter(model.values())
    objects = {o.cid: o.refcount for o in repo.list_objects()}
    assert objects == dict(counts)
    assert {f.key: f.cid for f in repo.list_files()} == model
    for cid in CIDS:
        assert (repo.get_key(cid) is not None) == (cid in counts)
    assert repo.fix_refcounts() == []


@settings(max_examples=100, deadline=None)
@given(ops)
def test_random_operations_match_model(seq: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp, Repo.open(Path(tmp) / "p2p.db") as repo:
        model: dict[bytes, str] = {}
        for i, (op, k, c) in enumerate(seq):
            key, cid = KEYS[k], CIDS[c]
            now = float(i)
            old = model.get(key)
            if op == "remove":
                if old is None:
                    try:
                        repo.remove_file(key)
                    except NotFound:
                        pass
                    else:
                        raise AssertionError("remove of a missing key succeeded")
                    continue
                del model[key]
                assert repo.remove_file(key) == (old, old not in model.values())
            else:
                known = cid in model.values()
                if op == "add_known" and not known:
                    # no new_object: only an object already in the repo may be referenced
                    try:
                        repo.add_file(key, cid, 1, now)
                    except NotFound:
                        continue
                    raise AssertionError("add_file of an unknown cid without new_object succeeded")
                new = ObjectRow(cid, 1, 65536, 1, 0, now)
                got = repo.add_file(key, cid, 1, now, new, b"w" + cid.encode(), "aes-256-gcm")
                model[key] = cid
                orphan = old if old is not None and old != cid and old not in model.values() else None
                assert got == orphan
            check(repo, model)
        check(repo, model)
