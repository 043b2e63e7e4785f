"""Hub download against a local stand-in for the hub client (offline); one network test does it for real."""

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from puma.data.download import (
    MBEIR_REPO,
    NLI_FILE,
    NLI_REPO,
    DownloadError,
    HFHubClient,
    RemoteFile,
    download_mbeir,
    download_nli,
    needed_files,
    select_mbeir,
)


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    """Serves files of a local folder like the hub: big files get an LFS sha256, small ones a git sha1."""

    def __init__(self, repos: dict[str, Path], lfs_above: int = 200) -> None:
        self.repos, self.lfs_above = repos, lfs_above
        self.calls: list[str] = []
        self.corrupt: set[str] = set()
        self.fail_after: int | None = None

    def list_files(self, repo_id):
        out = []
        for p in sorted(self.repos[repo_id].rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                big = len(data) > self.lfs_above
                out.append(RemoteFile(str(p.relative_to(self.repos[repo_id])), len(data),
                                      hashlib.sha256(data).hexdigest() if big else None,
                                      None if big else _git_sha1(data)))
        return out

    def download(self, repo_id, path, local_dir):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise DownloadError("connection lost")
        self.calls.append(path)
        data = (self.repos[repo_id] / path).read_bytes()
        if path in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        dst = Path(local_dir) / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
        return dst


def make_hub_repo(repo: Path, mbeir_mini: Path, image_parts: int = 3, max_images: int | None = 5) -> Path:
    """A stand-in for the hub repository: every text file of ``mbeir_mini`` (per-dataset train files,
    val and test splits, pools, qrels, instructions) and its images as a split ``.tar.gz``."""
    for p in sorted(mbeir_mini.rglob("*")):
        if p.is_file() and not p.name.endswith(".jpg"):
            (repo / p.relative_to(mbeir_mini)).parent.mkdir(parents=True, exist_ok=True)
            (repo / p.relative_to(mbeir_mini)).write_bytes(p.read_bytes())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        imgs = sorted((mbeir_mini / "mbeir_images").rglob("*.jpg"))
        if max_images is not None:
            imgs = sorted((mbeir_mini / "mbeir_images/mscoco_images/test").glob("*.jpg"))[:max_images]
        for img in imgs:
            tar.add(img, arcname=str(img.relative_to(mbeir_mini)))
    blob = buf.getvalue()
    part = len(blob) // image_parts + 1
    for i in range(image_parts):
        (repo / f"mbeir_images.tar.gz.part-0{i}").write_bytes(blob[i * part:(i + 1) * part])
    return repo


@pytest.fixture
def hub(tmp_path, mbeir_mini, nli_mini):
    repo = make_hub_repo(tmp_path / "hub_mbeir", mbeir_mini)
    nli_repo = tmp_path / "hub_nli"
    nli_repo.mkdir()
    (nli_repo / NLI_FILE).write_bytes(Path(nli_mini).read_bytes())
    return FakeHub({MBEIR_REPO: repo, NLI_REPO: nli_repo})


def test_selection_fetches_exactly_what_the_splits_need():
    everything = needed_files(["train", "val", "test"])
    extra = ["query/train/mbeir_cirr_train.jsonl", "README.md", "mbeir_images.tar.gz.part-00"]
    files = [RemoteFile(p) for p in everything + extra]
    test_only = [f.path for f in select_mbeir(files, ["test"], images=False)]
    assert test_only == needed_files(["test"]) and len(test_only) == 16 * 3 + 2  # columns x 3, global, tsv
    assert "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl" in test_only
    assert "cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl" not in test_only  # MSCOCO's val pool
    val = set(needed_files(["val"]))
    assert {"query/union_val/mbeir_union_val.jsonl", "cand_pool/global/mbeir_union_val_cand_pool.jsonl",
            "cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl", "qrels/val/mbeir_cirr_task7_val_qrels.txt"} <= val
    train = {f.path for f in select_mbeir(files, ["train"], images=True)}
    assert train == {"instructions/query_instructions.tsv", "query/union_train/mbeir_union_up_train.jsonl",
                     "cand_pool/global/mbeir_union_train_cand_pool.jsonl", "mbeir_images.tar.gz.part-00"}
    with pytest.raises(ValueError, match="unknown split"):
        select_mbeir(files, ["dev"], images=False)
    with pytest.raises(DownloadError, match="1 needed file.* not on the hub, e.g. qrels/test/mbeir_cirr"):
        select_mbeir([f for f in files if f.path != "qrels/test/mbeir_cirr_task7_test_qrels.txt"], ["test"], False)


def test_download_is_verified_and_not_repeated(tmp_path, hub):
    out = tmp_path / "m"
    download_mbeir(out, ["test"], images=False, client=hub, log=lambda *_: None)
    assert (out / "query/test/mbeir_mscoco_task0_test.jsonl").is_file()
    assert not (out / "query/union_train").exists() and not list(out.glob("mbeir_images*"))
    first = list(hub.calls)
    download_mbeir(out, ["test"], images=False, client=hub, log=lambda *_: None)
    assert hub.calls == first  # finished files are not fetched again


def test_interrupted_download_resumes_with_the_rest(tmp_path, hub):
    out = tmp_path / "m"
    hub.fail_after = 2
    with pytest.raises(DownloadError, match="connection lost"):
        download_mbeir(out, ["test"], images=False, client=hub, log=lambda *_: None)
    hub.fail_after = None
    done_before = list(hub.calls)
    download_mbeir(out, ["test"], images=False, client=hub, log=lambda *_: None)
    assert not set(done_before) & set(hub.calls[len(done_before):])  # the two finished files were kept


def test_checksum_mismatch_removes_the_file(tmp_path, hub):
    hub.corrupt = {"cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl", "instructions/query_instructions.tsv"}
    with pytest.raises(DownloadError, match="differs from the hub's"):
        download_mbeir(tmp_path / "m", ["test"], images=False, client=hub, log=lambda *_: None)
    assert not (tmp_path / "m" / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl").exists()


def test_image_parts_are_joined_and_extracted(tmp_path, hub, mbeir_mini):
    out = tmp_path / "m"
    download_mbeir(out, ["test"], images=True, client=hub, log=lambda *_: None)
    imgs = sorted((out / "mbeir_images/mscoco_images/test").glob("*.jpg"))
    assert len(imgs) == 5
    assert imgs[0].read_bytes() == (mbeir_mini / imgs[0].relative_to(out)).read_bytes()


def test_unsafe_archive_is_refused(tmp_path):
    from puma.data.download import join_and_extract

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    part = tmp_path / "mbeir_images.tar.gz.part-00"
    part.write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="cannot extract"):
        join_and_extract(tmp_path, [part], log=lambda *_: None)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_nli_download(tmp_path, hub, nli_mini):
    got = download_nli(tmp_path / "nli" / "renamed.csv", client=hub, log=lambda *_: None)
    assert got.read_bytes() == Path(nli_mini).read_bytes()


def test_offline_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)  # conftest sets HF_HUB_OFFLINE=1; be explicit anyway
    with pytest.raises(DownloadError, match="cannot reach the Hugging Face hub"):
        download_nli(tmp_path / "n.csv", client=HFHubClient(), log=lambda *_: None)


@pytest.mark.network
def test_real_hub_instructions(tmp_path):
    client = HFHubClient()
    files = [f for f in client.list_files(MBEIR_REPO) if f.path == "instructions/query_instructions.tsv"]
    from puma.data.download import fetch
    from puma.data.instructions import load_instructions

    (got,) = fetch(client, MBEIR_REPO, files, tmp_path, log=lambda *_: None)
    table = load_instructions(got)
    assert (9, "text", "image") in table and all(len(v) >= 1 for v in table.values())
