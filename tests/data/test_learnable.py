"""MBEIR-mini is learnable from its training split: a ridge map from bag-of-words to image colour-grid
features, fitted on union_train (caption <-> image pairs), ranks the test pools far above chance."""

import re

import numpy as np
from PIL import Image

from puma.data.columns import GLOBAL_TRAIN_POOL, UNION_TRAIN_QUERIES, column
from puma.data.schema import load_candidates, load_qrels, load_queries
from puma.metrics import chance_recall_at_k, recall_at_k

COLUMNS = ["visualnews_task0", "mscoco_task0", "fashion200k_task0", "visualnews_task3", "mscoco_task3",
           "fashion200k_task3"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def test_linear_probe_beats_chance(mbeir_mini):
    root = mbeir_mini

    def img_feat(rel):  # 12x12 thumbnail (colour + rough position)
        return np.asarray(Image.open(root / rel).convert("RGB").resize((12, 12)), dtype=np.float64).ravel() / 255

    pool = {c.did: c for c in load_candidates(root / GLOBAL_TRAIN_POOL)}
    pairs = []
    for q in load_queries(root / UNION_TRAIN_QUERIES):
        c = pool[q.pos_cand_list[0]]
        if q.task_id == 0:
            pairs.append((q.query_txt, c.img_path))
        elif q.task_id == 3:
            pairs.append((c.txt, q.query_img_path))
    vocab = {w: i for i, w in enumerate(sorted({w for t, _ in pairs for w in _words(t)}))}

    def txt_feat(text):
        v = np.zeros(len(vocab))
        for w in _words(text):
            if w in vocab:
                v[vocab[w]] = 1.0
        return v

    x = np.stack([txt_feat(t) for t, _ in pairs])
    y = np.stack([img_feat(p) for _, p in pairs])
    y_mean = y.mean(0)
    w = np.linalg.solve(x.T @ x + np.eye(len(vocab)), x.T @ (y - y_mean))  # ridge: text -> image features

    def unit(v):
        return v / np.linalg.norm(v)

    recalls, chances = [], []
    for name in COLUMNS:
        col = column(name)
        queries, cands = load_queries(root / col.query_file), load_candidates(root / col.pool_file)
        rel = load_qrels(root / col.qrels_file)
        text_side = lambda t: unit(txt_feat(t) @ w)
        image_side = lambda p: unit(img_feat(p) - y_mean)
        if col.task_id == 0:
            qe = np.stack([text_side(q.query_txt) for q in queries])
            ce = np.stack([image_side(c.img_path) for c in cands])
        else:
            qe = np.stack([image_side(q.query_img_path) for q in queries])
            ce = np.stack([text_side(c.txt) for c in cands])
        ranked = [[cands[j].did for j in row] for row in np.argsort(-(qe @ ce.T), axis=1, kind="stable")]
        k = 10 if name.startswith("fashion") else 5
        recalls.append(recall_at_k(ranked, [rel[q.qid] for q in queries], k))
        chances.append(chance_recall_at_k(len(cands), [1] * len(queries), k))
    assert np.mean(recalls) > 2 * np.mean(chances), (recalls, chances)
    assert np.mean(recalls) > 0.75
