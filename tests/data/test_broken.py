"""A corpus of broken MBEIR-mini / NLI variants: each is rejected with the file and line named.

Every variant is applied to a copy of the session's MBEIR-mini (images hard-linked: image edits replace
the file, never write through the link). ``validate`` must report the exact (file, line); where a loader
reads that file, the loader must refuse it too, naming the same file and line.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from puma.data.datasets import EvalView, MBEIRTrain, NLIPairs
from puma.data.schema import DataError
from puma.data.validate import validate

Q = "query/test/mbeir_mscoco_task0_test.jsonl"
P = "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"
R = "qrels/test/mbeir_mscoco_task0_test_qrels.txt"
I = "instructions/query_instructions.tsv"
U = "query/union_train/mbeir_union_up_train.jsonl"
QV = "query/val/mbeir_mscoco_task0_val.jsonl"
RV = "qrels/val/mbeir_mscoco_task0_val_qrels.txt"
T = "query/train/mbeir_mscoco_train.jsonl"
P3 = "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl"


def _lines(root: Path, rel: str) -> list[str]:
    return (root / rel).read_text().splitlines(keepends=True)


def _set_line(root, rel, n, text):
    lines = _lines(root, rel)
    lines[n - 1] = text if text.endswith("\n") else text + "\n"
    (root / rel).write_text("".join(lines))


def _edit_json(root, rel, n, **changes):
    obj = json.loads(_lines(root, rel)[n - 1])
    for k, v in changes.items():
        if v is _DROP:
            del obj[k]
        else:
            obj[k] = v
    _set_line(root, rel, n, json.dumps(obj))


_DROP = object()


def _obj(root, rel, n):
    return json.loads(_lines(root, rel)[n - 1])


def _replace_image(root, rel, n, data: bytes | None):
    img = root / _obj(root, rel, n)["img_path"]
    img.unlink()  # break the hard link first
    if data is not None:
        img.write_bytes(data)


def _symlink_out(root, rel, n):
    img = root / _obj(root, rel, n)["img_path"]
    outside = root.parent / "outside.png"
    shutil.copyfile(img, outside)
    img.unlink()
    img.symlink_to(outside)


def _truncate_image(root, rel, n):
    img = root / _obj(root, rel, n)["img_path"]
    data = img.read_bytes()
    img.unlink()
    img.write_bytes(data[: len(data) // 2])


def _drop_instruction_row(root):
    lines = [ln for ln in _lines(root, I) if not ln.startswith("text\timage\tMSCOCO\t")]
    (root / I).write_text("".join(lines))


def _dup_did(root):
    _edit_json(root, P, 9, did=_obj(root, P, 1)["did"])


# (id, mutate(root), file, line, message fragment, loader that must also refuse it: "eval" | "train" | None)
VARIANTS = [
    ("truncated-line", lambda r: _set_line(r, Q, 2, _lines(r, Q)[1][:40]), Q, 2, "not valid JSON", "eval"),
    ("not-an-object", lambda r: _set_line(r, Q, 3, "[1, 2]"), Q, 3, "must be a JSON object", "eval"),
    ("wrong-type-task", lambda r: _edit_json(r, Q, 3, task_id="0"), Q, 3, "task_id must be an integer", "eval"),
    ("wrong-type-txt", lambda r: _edit_json(r, Q, 2, query_txt=["a"]), Q, 2, "must be a string or null", "eval"),
    ("missing-field", lambda r: _edit_json(r, Q, 1, pos_cand_list=_DROP), Q, 1, "missing field 'pos_cand_list'",
     "eval"),
    ("unknown-modality", lambda r: _edit_json(r, P, 4, modality="video"), P, 4, "'video' is not one of", "eval"),
    ("modality-disagrees", lambda r: _edit_json(r, P, 5, modality="text"), P, 5, "txt is missing", "eval"),
    ("bad-id-shape", lambda r: _edit_json(r, Q, 6, qid="9-6"), Q, 6, "not shaped '<dataset_id>:<n>'", "eval"),
    ("unknown-dataset-id", lambda r: _edit_json(r, P, 3, did="42:1"), P, 3, "unknown dataset id 42", "eval"),
    ("wrong-column", lambda r: _edit_json(r, Q, 2, qid="0:9999"), Q, 2, "does not belong to column", "eval"),
    ("duplicate-qid", lambda r: _edit_json(r, Q, 5, qid=_obj(r, Q, 1)["qid"]), Q, 5, "duplicate qid", "eval"),
    ("duplicate-did", _dup_did, P, 9, "duplicate did", "eval"),
    ("dot-dot-img-path", lambda r: _edit_json(r, P, 6, img_path="../outside.png"), P, 6, "contains '..'", "eval"),
    ("absolute-img-path", lambda r: _edit_json(r, P, 7, img_path="/etc/hostname"), P, 7, "is absolute", "eval"),
    ("symlink-escapes-root", lambda r: _symlink_out(r, P, 8), P, 8, "resolves outside the dataset root", None),
    ("missing-image", lambda r: _replace_image(r, P, 2, None), P, 2, "not found", "eval"),
    ("corrupt-image", lambda r: _replace_image(r, P, 3, b"not a png at all"), P, 3, "does not open", None),
    ("truncated-image", lambda r: _truncate_image(r, P, 4), P, 4, "does not open", None),
    ("dangling-qrel", lambda r: _set_line(r, R, 1, _lines(r, R)[0].replace(_lines(r, R)[0].split()[2], "9:999999")),
     R, 1, "qrel names candidate 9:999999", "eval"),
    ("qrel-unknown-query", lambda r: _set_line(r, R, 2, "9:999999 0 " + " ".join(_lines(r, R)[1].split()[2:])),
     R, 2, "qrel names query 9:999999", "eval"),
    ("qrel-short-line", lambda r: _set_line(r, R, 2, " ".join(_lines(r, R)[1].split()[:3])), R, 2,
     "5 whitespace-separated fields", "eval"),
    ("qrel-wrong-task", lambda r: _set_line(r, R, 3, " ".join(_lines(r, R)[2].split()[:4] + ["4"])), R, 3,
     "task_id 4 but the file is for task 0", None),
    ("dangling-pos-cand", lambda r: _edit_json(r, Q, 4, pos_cand_list=["9:999999"]), Q, 4,
     "pos_cand_list entry 9:999999", None),
    ("dangling-train-pos", lambda r: _edit_json(r, U, 1, pos_cand_list=["0:999999"]), U, 1,
     "pos_cand_list entry 0:999999", "train"),
    ("missing-instruction-row", _drop_instruction_row, I, 0,
     "no instruction row for dataset 9, text -> image (needed by", "eval"),
    ("instruction-unknown-modality", lambda r: _set_line(r, I, 3, _lines(r, I)[2].replace("text", "audio", 1)), I, 3,
     "unknown modality 'audio'", "eval"),
    ("instruction-duplicate-row", lambda r: (r / I).write_text("".join(_lines(r, I) + [_lines(r, I)[1]])), I, 18,
     "duplicate row", "eval"),
    ("empty-query-file", lambda r: (r / Q).write_text(""), Q, 1, "empty file", "eval"),
    ("empty-qrels-file", lambda r: (r / R).write_text(""), R, 1, "empty file", "eval"),
    ("empty-instructions", lambda r: (r / I).write_text(""), I, 1, "empty file", "eval"),
    # The rules for real M-BEIR's quirks: accepted forms stop where the line is malformed.
    ("task-contradicts-query-modality", lambda r: _edit_json(r, Q, 2, task_id=3), Q, 2,
     "contradicts query_modality 'text'", "eval"),
    ("task-contradicts-positive", lambda r: _edit_json(r, Q, 3, task_id=1), Q, 3,
     "task_id 1 contradicts the modalities text -> image (task 0)", "eval"),
    ("pos-entry-object-without-did", lambda r: _edit_json(r, Q, 4, pos_cand_list=[{"id": "9:1"}]), Q, 4,
     "pos_cand_list entry must be a string", "eval"),
    ("same-dataset-positive-outside-pool", lambda r: _set_line(r, R, 1, _lines(r, R)[0].replace(
        _lines(r, R)[0].split()[2], _obj(r, P3, 1)["did"])), R, 1, "which is not in", "eval"),
    ("val-dangling-qrel", lambda r: _set_line(r, RV, 1, _lines(r, RV)[0].replace(_lines(r, RV)[0].split()[2],
                                                                                "9:999999")),
     RV, 1, "qrel names candidate 9:999999", "val"),
    ("val-wrong-column", lambda r: _edit_json(r, QV, 1, qid="0:9999"), QV, 1, "does not belong to column", "val"),
    ("train-file-wrong-dataset", lambda r: _edit_json(r, T, 1, qid="0:999999"), T, 1, "is not a MSCOCO query", None),
]


@pytest.fixture
def broken_copy(tmp_path, mbeir_mini):
    root = tmp_path / "mbeir"
    # Hard-link the images (fast; edits replace them), copy the text files (edits write them).
    shutil.copytree(mbeir_mini, root, copy_function=lambda src, dst: os.link(src, dst) if src.endswith(".jpg")
                    else shutil.copy2(src, dst))
    return root


@pytest.mark.parametrize("name, mutate, rel, line, fragment, loader", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_broken_variant_is_rejected_with_file_and_line(broken_copy, name, mutate, rel, line, fragment, loader):
    mutate(broken_copy)
    needs_pixels = name in ("corrupt-image", "truncated-image")
    problems, _ = validate(broken_copy, check_images=needs_pixels)
    path = str(broken_copy / rel)
    hits = [p for p in problems if p.path == path and p.line == line and fragment in p.message]
    assert hits, f"{name}: expected {rel}:{line}: ...{fragment}...; got {[str(p) for p in problems][:6]}"
    if loader == "eval":
        with pytest.raises(DataError) as err:
            EvalView(broken_copy, "mscoco_task0")
        assert rel in str(err.value) and (line == 0 or f":{line}:" in str(err.value)), str(err.value)
    elif loader == "val":
        with pytest.raises(DataError) as err:
            EvalView(broken_copy, "mscoco_task0", split="val")
        assert rel in str(err.value) and f":{line}:" in str(err.value), str(err.value)
    elif loader == "train":
        with pytest.raises(DataError) as err:
            MBEIRTrain(broken_copy)
        assert rel in str(err.value) and f":{line}:" in str(err.value), str(err.value)


def test_variant_corpus_is_large_and_clean_copy_passes(broken_copy):
    assert len(VARIANTS) >= 20
    assert validate(broken_copy, check_images=False)[0] == []


NLI_VARIANTS = [
    ("empty", "", 1, "empty file"),
    ("wrong-header", "premise,hypothesis\na,b\n", 1, "header must start with sent0,sent1"),
    ("header-only", "sent0,sent1,hard_neg\n", 2, "no sentence pairs"),
    ("missing-field", "sent0,sent1,hard_neg\na,b,c\nd,e\n", 3, "expected 3 fields"),
    ("empty-sentence", "sent0,sent1,hard_neg\na,b,c\nd,e,f\n,x,y\n", 4, "must be non-empty"),
    ("unterminated-quote", 'sent0,sent1,hard_neg\na,b,c\n"d,e,f\n', 3, "expected 3 fields"),
]


@pytest.mark.parametrize("name, text, line, fragment", NLI_VARIANTS, ids=[v[0] for v in NLI_VARIANTS])
def test_broken_nli_is_rejected_with_file_and_line(tmp_path, name, text, line, fragment):
    path = tmp_path / "nli.csv"
    path.write_text(text)
    problems, _ = validate(path)
    assert any(p.line == line and fragment in p.message and p.path == str(path) for p in problems), problems
    with pytest.raises(DataError, match=rf"{path}:{line}: .*{fragment}"):
        NLIPairs(path)
