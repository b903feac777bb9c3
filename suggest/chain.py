"""The trie-tree hybrid label index of PECOS session-aware QAC (Yadav et al., KDD 2021, the
"HybridIndexer" of pecos/examples/qp2q): the top `trie_depth` levels of the label tree are a trie
on the labels' first characters, and below each trie node the labels are split by hierarchical
spherical k-means on their embeddings (PIFA). The trie layers make the beam search
prefix-consistent from the first level down (prefix "t" cannot wander into the "s" subtree), the
clustered layers keep leaves small and group labels that share contexts ("taylor swift ..."
after a Taylor Swift query).

A PECOS cluster chain is a list of CSC matrices, chain[i] of shape (nodes at level i+1, nodes at
level i), ending with (labels, leaf clusters). Labels must be sorted by text, so that every trie
node owns a contiguous run of labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import scipy.sparse as smat


def _assign(parent_ids: np.ndarray, keys: Sequence[str]) -> tuple[np.ndarray, smat.csc_matrix]:
    """Node ids of sorted `keys` (equal keys share a node) and the (nodes x parents) matrix."""
    ids = np.zeros(len(keys), dtype=np.int64)
    node = -1
    prev: str | None = None
    node_parent: list[int] = []
    for i, k in enumerate(keys):
        if k != prev:
            node += 1
            prev = k
            node_parent.append(int(parent_ids[i]))
        ids[i] = node
    n_nodes = node + 1
    n_parents = int(parent_ids.max()) + 1 if len(parent_ids) else 1
    mat = smat.csc_matrix((np.ones(n_nodes, dtype=np.float32), (np.arange(n_nodes), np.asarray(node_parent))),
                          shape=(n_nodes, n_parents), dtype=np.float32)
    return ids, mat


def trie_levels(texts: Sequence[str], depth: int) -> tuple[list[smat.csc_matrix], np.ndarray]:
    """The trie part of the chain and, per label, its node at the deepest trie level.
    A label shorter than the depth stays its own node below (a branch of factor 1)."""
    parent = np.zeros(len(texts), dtype=np.int64)
    mats: list[smat.csc_matrix] = []
    for d in range(1, depth + 1):
        keys = [t[:d] for t in texts]
        parent, mat = _assign(parent, keys)
        mats.append(mat)
    return mats, parent


def _cluster_group(feat: smat.csr_matrix, *, nr_splits: int, max_leaf_size: int, seed: int,
                   threads: int) -> list[smat.csc_matrix]:
    from pecos.xmc import Indexer

    n = feat.shape[0]
    if n <= max_leaf_size:
        return [smat.csc_matrix(np.ones((n, 1), dtype=np.float32))]
    chain = Indexer.gen(feat, indexer_type="hierarchicalkmeans", nr_splits=nr_splits, max_leaf_size=max_leaf_size,
                        seed=seed, threads=threads, spherical=True)
    return [smat.csc_matrix(m, dtype=np.float32) for m in chain]


def trie_hybrid_chain(texts: Sequence[str], label_feat: smat.csr_matrix, *, trie_depth: int = 2, nr_splits: int = 8,
                      max_leaf_size: int = 64, seed: int = 0, threads: int = -1) -> list[smat.csc_matrix]:
    if any(texts[i] > texts[i + 1] for i in range(len(texts) - 1)):
        raise ValueError("labels must be sorted by text for a trie index")
    if label_feat.shape[0] != len(texts):
        raise ValueError("one label embedding per label")
    top, group = trie_levels(texts, trie_depth)
    label_feat = smat.csr_matrix(label_feat, dtype=np.float32)
    bounds = np.flatnonzero(np.diff(group)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(texts)]))
    subs = [_cluster_group(label_feat[a:b], nr_splits=nr_splits, max_leaf_size=max_leaf_size, seed=seed,
                           threads=threads) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    depth = max(len(s) for s in subs)
    padded = []
    for s in subs:
        n_leaves = s[-1].shape[1]
        eye = smat.identity(n_leaves, dtype=np.float32, format="csc")
        padded.append(s[:-1] + [eye] * (depth - len(s)) + [s[-1]])
    # Block-diagonal per level: each trie node's subtree side by side, labels in their sorted order.
    below = [smat.block_diag([p[level] for p in padded], format="csc", dtype=np.float32) for level in range(depth)]
    chain = top + below
    for upper, lower in itertools.pairwise(chain):
        assert lower.shape[1] == upper.shape[0], "cluster chain levels do not connect"
    return chain
