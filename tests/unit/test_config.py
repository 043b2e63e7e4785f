from pathlib import Path

import pytest

from puma.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_load_and_match_schema():
    s = load_settings(REPO / "params.yaml")
    assert isinstance(s, Settings)
    assert 1 <= s.model.prune_layers <= s.model.depth
    assert s.mac.lambda_ == pytest.approx(0.2)
    assert s.evaluate.k_for("fashioniq_task7") == 10 and s.evaluate.k_for("cirr_task7") == 5
    flat = s.flat()
    assert flat["mac.lambda"] == s.mac.lambda_ and "model.prune_layers" in flat


def _write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_env_overrides_nested_keys(tmp_path, monkeypatch):
    p = _write(tmp_path, "model:\n  prune_layers: 4\nmac:\n  lambda: 0.2\n")
    monkeypatch.setenv("PUMA_MODEL__PRUNE_LAYERS", "6")
    monkeypatch.setenv("PUMA_MAC__LAMBDA", "0.5")
    s = load_settings(p)
    assert s.model.prune_layers == 6 and s.mac.lambda_ == 0.5


def test_unknown_key_names_key_file_and_line(tmp_path):
    p = _write(tmp_path, "model:\n  prune_layers: 4\n  prune_layer: 3\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert f"{p}:3: model.prune_layer: unknown key" in str(e.value)


def test_wrong_type_names_key(tmp_path):
    p = _write(tmp_path, "stage1:\n  epochs: two\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert f"{p}:2: stage1.epochs" in str(e.value) and "'two'" in str(e.value)


@pytest.mark.parametrize(
    "text,key",
    [
        ("model:\n  depth: 8\n  prune_layers: 9\n", "model.prune_layers"),
        ("model:\n  prune_layers: 0\n", "model.prune_layers"),
        ("stage2:\n  tau: 0\n", "stage2.tau"),
        ("stage1:\n  tau: -0.1\n", "stage1.tau"),
        ("mac:\n  form: linear\n", "mac.form"),
    ],
)
def test_out_of_range_values(tmp_path, text, key):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=key):
        load_settings(p)


def test_all_problems_reported_at_once(tmp_path):
    p = _write(tmp_path, "model:\n  prune_layers: 99\nstage2:\n  tau: 0\nbogus: 1\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    msg = str(e.value)
    assert "model.prune_layers" in msg and "stage2.tau" in msg and "bogus" in msg


def test_bad_env_override_names_the_variable(tmp_path, monkeypatch):
    p = _write(tmp_path, "seed: 0\n")
    monkeypatch.setenv("PUMA_STAGE1__EPOCHS", "zero")
    with pytest.raises(ConfigError, match="environment variable PUMA_STAGE1__EPOCHS"):
        load_settings(p)


def test_invalid_yaml_and_missing_file(tmp_path):
    p = _write(tmp_path, "model:\n  prune_layers: [4\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(p)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
