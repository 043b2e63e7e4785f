"""Stage-1 datasets are registered in one table: `puma data prepare NAME` and stage 1 read it."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from puma.cli import app
from puma.config import Settings
from puma.data import stage1_datasets
from puma.data.stage1_datasets import STAGE1_DATASETS, Stage1Dataset, stage1_dataset
from puma.train.stage1 import stage1_pairs

runner = CliRunner()


def test_prepare_nli_through_the_registry(tmp_path):
    out = tmp_path / "nli.csv"
    res = runner.invoke(app, ["data", "prepare", "nli", "--out", str(out)])
    assert res.exit_code == 0 and "ready (synth" in res.output, res.output
    settings = Settings(data={"nli_path": str(out)})
    pairs = stage1_pairs(settings)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(pairs) == len(rows) and pairs[0]["query"]["text"] == rows[0]["sent0"]
    assert pairs[0]["positive"]["text"] == rows[0]["sent1"]


def test_unknown_dataset_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["data", "prepare", "wiki", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "nli" in res.output
    try:
        stage1_pairs(Settings(stage1={"dataset": "wiki"}))
    except KeyError as e:
        assert "stage1.dataset" in str(e) and "nli" in str(e)
    else:
        raise AssertionError("an unknown stage1.dataset must fail")


def test_a_new_dataset_is_one_registry_entry(tmp_path, monkeypatch):
    target = tmp_path / "toy.tsv"

    def synth(path: Path, data) -> Path:
        path.write_text("a red cup\ta cup that is red\n")
        return path

    def load(path: Path):
        q, p = path.read_text().rstrip("\n").split("\t")
        return [{"query": {"text": q}, "positive": {"text": p}}]

    toy = Stage1Dataset(path=lambda data: target, load=load, check=lambda path: ([], {"pairs": 1}), synth=synth,
                        download=lambda path, log: path)
    monkeypatch.setitem(stage1_datasets.STAGE1_DATASETS, "toy", toy)
    res = runner.invoke(app, ["data", "prepare", "toy"])
    assert res.exit_code == 0 and "1 pairs" in res.output, res.output
    assert stage1_pairs(Settings(stage1={"dataset": "toy"})) == load(target)
    assert stage1_dataset("toy") is toy and "toy" in STAGE1_DATASETS
