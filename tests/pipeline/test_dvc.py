"""dvc.yaml: code deps cover what each stage imports, params exist, and a param change re-runs only
the stages downstream of its readers. (The real end-to-end runs are in test_flow.py, marked slow.)"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[2]

# The library modules each stage's command runs (its CLI module is a dep too, not followed: the CLI
# modules import lazily inside every command of their group).
STAGE_ENTRIES = {
    "tiny": ["puma/model/tiny.py", "puma/data/corpus.py"],  # the CLI passes the corpus to the builder
    "mbeir": ["puma/data/synth.py"],
    "nli": ["puma/data/synth.py"],
    "pretrain": ["puma/train/pretrain.py"],
    "prune": ["puma/model/prune.py"],
    "teacher_cache": ["puma/train/stage1.py", "puma/train/teacher_cache.py"],
    "stage1": ["puma/train/stage1.py", "flows/launch.py"],
    "stage2": ["puma/train/stage2.py", "flows/launch.py"],
    "embed": ["puma/evaluate.py", "puma/distributed.py", "flows/launch.py"],
    "evaluate": ["puma/evaluate.py"],
    "report": ["puma/report.py"],
    "register": ["puma/tracking/__init__.py"],
}


def _module_file(name: str) -> Path | None:
    base = REPO / name.replace(".", "/")
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def import_closure(files: list[str]) -> set[str]:
    """Repo files reachable from ``files`` through ``puma``/``flows`` imports (lazy ones included)."""
    seen: set[Path] = set()
    todo = [REPO / f for f in files]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] not in ("puma", "flows"):
                    continue
                for i in range(1, len(parts) + 1):
                    f = _module_file(".".join(parts[:i]))
                    if f is not None and f not in seen:
                        todo.append(f)
    return {str(p.relative_to(REPO)) for p in seen}


@pytest.fixture(scope="module")
def stages():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        graph = repo.index.graph
        info = {}
        for st in graph.nodes:
            info[st.name] = {
                "deps": [str(Path(d.def_path)) for d in st.deps if not d.__class__.__name__.startswith("Param")],
                "params": {k for d in st.deps if d.__class__.__name__.startswith("Param") for k in (d.params or [])},
                "all_params": any(d.__class__.__name__.startswith("Param") and not d.params for d in st.deps),
                "outs": [str(o.def_path) for o in st.outs],
                "downstream": {s.name for s in nx.ancestors(graph, st)},  # edges point to dependencies
            }
        metrics = [str(p) for p in repo.index.metrics] if hasattr(repo.index, "metrics") else []
        return info, metrics


def test_every_stage_present(stages):
    info, _ = stages
    assert set(STAGE_ENTRIES) <= set(info)


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRIES))
def test_code_deps_cover_imports(stages, stage):
    """A stage re-runs when any code it runs changes: every imported repo file is (under) a dep."""
    deps = stages[0][stage]["deps"]
    needed = import_closure(STAGE_ENTRIES[stage]) - {"puma/__init__.py"}
    missing = sorted(f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"{stage}: add to deps in dvc.yaml: {missing}"


def test_params_are_real_keys(stages):
    """Every params key a stage lists is written in params.yaml itself: DVC reads the file, not the
    schema's defaults, and fails a stage whose key is only a default."""
    import yaml

    def flatten(d: dict, prefix: str = "") -> set[str]:
        keys = set()
        for k, v in d.items():
            keys.add(prefix + k)
            if isinstance(v, dict):
                keys |= flatten(v, prefix + k + ".")
        return keys

    written = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    for name, st in stages[0].items():
        for key in st["params"]:
            assert key in written, f"{name}: params key {key!r} is not written in params.yaml"


def _readers(info, prefix: str) -> set[str]:
    return {n for n, st in info.items()
            if not st["all_params"] and any(prefix == k or prefix.startswith(k + ".") for k in st["params"])}


def _rerun(info, key: str) -> set[str]:
    readers = _readers(info, key) | {n for n, st in info.items() if st["all_params"]}
    return readers | {d for r in readers for d in info[r]["downstream"]}


def test_mac_lambda_reruns_stage2_onwards_only(stages):
    info, _ = stages
    assert _readers(info, "mac.lambda") == {"stage2"}
    assert _rerun(info, "mac.lambda") == {"stage2", "embed", "evaluate", "report",
                                                                "register"}


def test_prune_layers_reruns_prune_onwards(stages):
    info, _ = stages
    assert _rerun(info, "model.prune_layers") == {"prune", "teacher_cache", "stage1", "stage2", "embed",
                                                  "evaluate", "report", "register"}


def test_stage1_keys_do_not_touch_data_or_prune(stages):
    info, _ = stages
    for key in ("stage1.lr", "stage1.alpha_mode", "stage1.distill_kind"):
        assert _readers(info, key) == {"stage1"}
    assert _readers(info, "evaluate.k_default") == {"evaluate"}


@pytest.mark.parametrize("key", ["evaluate.k_default", "evaluate.k_overrides", "evaluate.pools",
                                 "evaluate.top_k_saved"])
def test_evaluate_keys_do_not_reembed(stages, key):
    """Search/score keys re-run evaluate, report, register; the embeddings are kept."""
    assert _rerun(stages[0], key) == {"evaluate", "report", "register"}


def test_embedding_keys_reembed(stages):
    info, _ = stages
    for key in ("embed.shard_size", "prompt.max_pixels", "model.dtype", "evaluate.instruction_seed", "evaluate.split"):
        assert "embed" in _readers(info, key), key
        assert _rerun(info, key) >= {"embed", "evaluate", "report", "register"}
    assert "evaluate" in info["embed"]["downstream"]  # evaluate reads the stores


def test_metrics_and_plots_declared():
    import yaml

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert spec["metrics"] == ["artifacts/eval/metrics.json"]
    plots = [next(iter(p)) for p in spec["plots"]]
    assert all(p.startswith("reports/report/plots/") and p.endswith(".csv") for p in plots)
    assert "artifacts/eval" in spec["stages"]["evaluate"]["outs"]


def test_pretrain_feeds_prune_and_the_teacher(stages):
    """The embedded default's base is the pretrained tiny model: `pretrain` reads `tiny`, prune and the
    full-depth teacher read model.base = artifacts/pretrained, and pretraining keys re-run prune onwards."""
    from puma.config import PRETRAINED_DIR, load_settings

    info, _ = stages
    assert load_settings(REPO / "params.yaml").model.base == PRETRAINED_DIR
    assert "artifacts/tiny" in info["pretrain"]["deps"] and info["pretrain"]["outs"] == [PRETRAINED_DIR]
    for stage in ("prune", "teacher_cache", "stage1"):
        assert PRETRAINED_DIR in info[stage]["deps"], stage
    assert _readers(info, "pretrain.steps") == {"pretrain"}
    assert _rerun(info, "pretrain.lr") >= {"pretrain", "prune", "teacher_cache", "stage1", "stage2", "evaluate"}
