"""puma.index: faiss streaming search against the numpy brute-force oracle."""

import numpy as np
import pytest

from puma.index import Shard, l2_normalize, search, search_numpy


def _pool(n, d, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return l2_normalize(rng.standard_normal((n, d))).astype(dtype)


def _shards(pool, sizes):
    ids = [f"c:{i}" for i in range(len(pool))]
    out, lo = [], 0
    for size in sizes:
        out.append(Shard(pool[lo:lo + size], ids[lo:lo + size]))
        lo += size
    assert lo == len(pool)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("block_rows", [7, 1000])
def test_faiss_matches_numpy_oracle(dtype, block_rows):
    pool = _pool(500, 32, 0, dtype)
    queries = _pool(40, 32, 1)
    res = search(queries, _shards(pool, [123, 1, 300, 76]), k=10, block_rows=block_rows, use_gpu=False)
    s, r = search_numpy(queries, pool.astype(np.float32), 10)
    np.testing.assert_array_equal(res.rows, r)
    np.testing.assert_allclose(res.scores, s, rtol=0, atol=1e-5)
    assert res.ids == [[f"c:{i}" for i in row] for row in r]


@pytest.mark.parametrize("numpy_backend", [False, True])
@pytest.mark.parametrize("query_block", [1, 7, 1000])
def test_query_blocks_and_numpy_backend_match_the_oracle(monkeypatch, numpy_backend, query_block):
    """Queries scored in blocks (and the numpy index used without faiss) give the oracle's top-k,
    ties included (every pool vector appears twice)."""
    from puma import index

    if numpy_backend:
        monkeypatch.setattr(index, "_flat_index", lambda dim, use_gpu: index._NumpyFlatIP())
    rng = np.random.default_rng(4)
    # Entries in {-1, 0, 1} / 4: every inner product is exact in float32 whatever the summation order,
    # so the many equal scores are true ties (duplicated rows, and chance collisions) for every backend.
    base = (rng.integers(-1, 2, (150, 24)) / 4).astype(np.float16)
    pool = np.concatenate([base, base])
    queries = (rng.integers(-1, 2, (33, 24)) / 4).astype(np.float32)
    res = search(queries, _shards(pool, [64, 64, 64, 64, 44]), k=9, block_rows=50, query_block=query_block,
                 use_gpu=False)
    s, r = search_numpy(queries, pool.astype(np.float32), 9)
    np.testing.assert_array_equal(res.rows, r)
    np.testing.assert_allclose(res.scores, s, rtol=0, atol=1e-5)
    assert res.ids == [[f"c:{i}" for i in row] for row in r]


def test_ties_rank_earlier_row_first_across_shards_and_blocks():
    base = _pool(6, 16, 2)
    pool = np.concatenate([base] * 5)  # every vector 5 times: rows i, i+6, i+12, ...
    queries = base[:3]
    res = search(queries, _shards(pool, [10, 10, 10]), k=4, block_rows=4, use_gpu=False)
    for qi in range(3):
        # the exact duplicates of query qi score 1.0 and tie: earliest rows win, in order
        assert res.rows[qi].tolist() == [qi, qi + 6, qi + 12, qi + 18]
    _, oracle = search_numpy(queries, pool, 4)
    np.testing.assert_array_equal(res.rows, oracle)


def test_boundary_tie_is_resolved_like_the_oracle():
    # Query scores 0.5 against many identical candidates: the k=3 cut falls inside the tie.
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    v = np.array([0.5, np.sqrt(0.75)], dtype=np.float32)
    pool = np.stack([v] * 50 + [np.array([1.0, 0.0], np.float32)])
    res = search(q, [Shard(pool, [str(i) for i in range(51)])], k=3, use_gpu=False)
    assert res.rows[0].tolist() == [50, 0, 1]


def test_pool_smaller_than_k_pads_with_minus_one():
    pool = _pool(3, 8, 3)
    res = search(pool[:2], [Shard(pool, ["a", "b", "c"])], k=5, use_gpu=False)
    assert (res.rows[:, 3:] == -1).all() and np.isneginf(res.scores[:, 3:]).all()
    assert [len(x) for x in res.ids] == [3, 3]
    assert res.ids[0][0] == "a" and res.ids[1][0] == "b"


def test_bad_inputs_raise_clear_errors():
    pool = _pool(4, 8, 4)
    with pytest.raises(ValueError, match="dimension"):
        search(_pool(2, 6, 5), [Shard(pool, list("abcd"))], k=2, use_gpu=False)
    with pytest.raises(ValueError, match="ids"):
        Shard(pool, ["a"])
    with pytest.raises(ValueError, match="k must"):
        search(pool, [Shard(pool, list("abcd"))], k=0)
