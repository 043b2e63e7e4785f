"""Pruning is a cut: the k-layer model reproduces the full model's norm(hidden_states[k]) exactly."""

import copy
import json
import re

import pytest
import torch
from PIL import Image
from transformers import Qwen2VLConfig, Qwen2VLModel

from puma.config import PromptSettings
from puma.model.encoding import MODEL_INPUTS, collate
from puma.model.flops import load_config
from puma.model.processor import load_processor
from puma.model.prune import count_params, load_pruned, prune_layers, save_pruned
from puma.model.ret import ensure_ret_token

PROMPT = PromptSettings(max_pixels=16 * 28 * 28)


@pytest.fixture(scope="module")
def full(tiny_dir):
    return Qwen2VLModel.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="module")
def batch(tiny_dir):
    items = [{"text": "a red circle on grey", "image": Image.new("RGB", (84, 56), (200, 30, 30))},
             "a short sentence", {"image": Image.new("RGB", (56, 56), (0, 90, 200))}]
    b = collate(load_processor(tiny_dir), items, False, PROMPT)
    return {k: b[k] for k in MODEL_INPUTS}


@pytest.mark.parametrize("k", range(1, 9))
def test_pruned_last_state_equals_norm_of_full_layer_k(full, batch, k):
    with torch.no_grad():
        hs = full(**batch, output_hidden_states=True).hidden_states  # 9 tensors (B, S, H)
        pruned = prune_layers(copy.deepcopy(full), k)
        got = pruned(**batch).last_hidden_state
    # hs[8] already has the final norm applied; hs[k < 8] is the raw output of layer k-1.
    want = hs[8] if k == 8 else full.language_model.norm(hs[k])
    assert len(pruned.language_model.layers) == k == pruned.config.text_config.num_hidden_layers
    assert len(pruned.config.text_config.layer_types) == k
    assert pruned.config.text_config.max_window_layers <= k
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_prune_rejects_bad_k(full):
    for k in (0, 9):
        with pytest.raises(ValueError, match=r"1\.\.8"):
            prune_layers(copy.deepcopy(full), k)


def test_saved_checkpoint_loads_cleanly_and_matches_in_place_pruning(tiny_dir, full, batch, tmp_path):
    out = save_pruned(tiny_dir, 3, tmp_path / "pruned")
    model, info = Qwen2VLModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    meta = json.loads((out / "config.json").read_text())["puma"]
    assert meta["base"] == str(tiny_dir) and meta["k"] == 3 and meta["depth"] == 8
    assert meta["provenance"]["base_files_sha256"]["model.safetensors"]
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert load_processor(out).tokenizer.convert_tokens_to_ids("[RET]") == meta["ret"]["id"]
    with torch.no_grad():
        want = prune_layers(copy.deepcopy(full), 3)(**batch).last_hidden_state
        torch.testing.assert_close(model.eval()(**batch).last_hidden_state, want, rtol=0, atol=0)
    assert not list(tmp_path.glob(".pruned.*"))  # no temporary directory left behind


def test_load_pruned_never_builds_the_dropped_layers(tiny_dir):
    model = load_pruned(tiny_dir, 2)
    assert len(model.language_model.layers) == 2
    assert not any("layers.2." in name for name, _ in model.named_parameters())


def test_ret_token_added_resized_and_initialised(tiny_dir):
    model = Qwen2VLModel.from_pretrained(tiny_dir)
    tok = load_processor(tiny_dir).tokenizer
    n = len(tok)
    old = model.get_input_embeddings().weight.detach().clone()
    info = ensure_ret_token(model, tok, "[EMB]", "mean")
    emb = model.get_input_embeddings().weight
    assert info == {"token": "[EMB]", "id": n, "added": True, "init": "mean"}
    assert emb.shape[0] == n + 1 and model.config.text_config.vocab_size == n + 1
    torch.testing.assert_close(emb[n], old[:n].mean(0))
    torch.testing.assert_close(emb[:n], old[:n])
    assert tok.tokenize("x [EMB].").count("[EMB]") == 1
    # An existing token keeps its (possibly trained) row.
    assert ensure_ret_token(model, tok, "[EMB]", "mean")["added"] is False


def test_ret_token_uses_spare_row_without_resizing_and_copies_a_token(tiny_dir):
    # Hub Qwen2-VL has spare embedding rows past the tokenizer: [RET] lands in one, and must be set.
    model = Qwen2VLModel.from_pretrained(tiny_dir)
    tok = load_processor(tiny_dir).tokenizer
    rows = len(tok) + 64
    model.resize_token_embeddings(rows, mean_resizing=False)
    red = tok.encode("red", add_special_tokens=False)
    info = ensure_ret_token(model, tok, "[EMB]", "token:red")
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == rows and info["id"] < rows
    torch.testing.assert_close(emb[info["id"]], emb[red].mean(0))


@pytest.mark.parametrize("name,vision,per_layer", [("2b", 665_000_000, 46_800_000), ("7b", 676_000_000, 233_100_000)])
def test_prune_real_configs_on_meta(name, vision, per_layer):
    config = load_config(name)
    with torch.device("meta"):
        model = Qwen2VLModel(config)
    full = count_params(model)
    full_keys = set(model.state_dict())
    assert abs(full["vision"] - vision) < 1e6 and abs(full["per_layer"] - per_layer) < 1e5
    for k in (12, 6, 1):  # prune further in place: 28 -> 12 -> 6 -> 1
        prune_layers(model, k)
        kept = count_params(model)
        for part in ("vision", "embed_tokens", "per_layer", "norm"):
            assert kept[part] == full[part], part
        assert kept["layers"] == k * full["per_layer"]
        assert kept["total"] == kept["vision"] + kept["embed_tokens"] + kept["layers"] + kept["norm"]
        dropped = full_keys - set(model.state_dict())
        assert dropped and all(int(key.split(".")[2]) >= k for key in dropped)
        assert all(key.startswith("language_model.layers.") for key in dropped)
        # The cut config is valid on its own: it rebuilds the same architecture.
        with torch.device("meta"):
            rebuilt = Qwen2VLModel(Qwen2VLConfig.from_dict(model.config.to_dict()))
        assert count_params(rebuilt) == kept


def test_load_pruned_bf16_with_device_map(tiny_dir):
    model = load_pruned(tiny_dir, 5, dtype=torch.bfloat16, device_map="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert len(model.language_model.layers) == 5


def test_cli_prune_reads_params_and_reports(tiny_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from puma.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(f"model:\n  base: {tiny_dir}\n  prune_layers: 2\n  ret_token: '[EMB]'\n  ret_init: 'token:red'\n")
    res = CliRunner().invoke(app, ["model", "prune", "--out", str(tmp_path / "p"), "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert "to k=2" in res.output and "added, init token:red" in res.output
    meta = json.loads((tmp_path / "p" / "config.json").read_text())["puma"]
    assert meta["k"] == 2 and meta["ret"]["token"] == "[EMB]"
    res = CliRunner().invoke(app, ["model", "prune", "--base", str(tiny_dir), "--layers", "9", "--out",
                                   str(tmp_path / "bad"), "--params", str(params)])
    assert res.exit_code == 1 and "1..8" in res.output and not (tmp_path / "bad").exists()


class _RecordingSlice:
    """A safetensors slice that records when it is materialised."""

    def __init__(self, inner, key, read):
        self._inner, self._key, self._read = inner, key, read

    def __getitem__(self, index):
        self._read.add(self._key)
        return self._inner[index]

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_load_pruned_never_reads_dropped_weights(tiny_dir, monkeypatch):
    # "Never two copies": the dropped layers and lm_head are not even read from the file, so a
    # 7B base pruned to 12 layers costs the memory of the kept part only (also with device_map).
    import transformers.modeling_utils as mu

    read: set[str] = set()
    real_open = mu.safe_open

    class RecordingOpen:
        def __init__(self, *args, **kwargs):
            self._f = real_open(*args, **kwargs)

        def get_slice(self, key):
            return _RecordingSlice(self._f.get_slice(key), key, read)

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(mu, "safe_open", RecordingOpen)
    load_pruned(tiny_dir, 3)
    # Keys as stored in the file (hub layout: model.layers.N..., visual.blocks.N..., lm_head.weight).
    layer = {key: int(re.search(r"layers\.(\d+)\.", key).group(1)) for key in read
             if "layers." in key and "visual" not in key}
    assert set(layer.values()) == {0, 1, 2}  # the recorder saw every kept layer ...
    assert any("visual." in key for key in read) and any("embed_tokens" in key for key in read)
    assert not any("lm_head" in key for key in read)  # ... and no lm_head, no layer 3..7


@pytest.mark.slow
def test_prune_2b_architecture_bf16(tiny_dir, tmp_path):
    """A bf16 Qwen2-VL-2B-shaped checkpoint (zero weights) pruned to k=12 on the CPU device map:
    the kept parameter counts are right, [RET] lands in a spare row (no resize), and it loads cleanly."""
    from transformers import Qwen2VLForConditionalGeneration

    config = load_config("2b")
    with torch.device("meta"):
        full = Qwen2VLForConditionalGeneration(config)
    full = full.to_empty(device="cpu").to(torch.bfloat16)
    for p in full.parameters():
        p.data.zero_()
    full.save_pretrained(tmp_path / "base")
    del full
    load_processor(tiny_dir).save_pretrained(tmp_path / "base")  # any processor; [EMB] is added below
    out = save_pruned(tmp_path / "base", 12, tmp_path / "k12", ret_token="[EMB]", dtype=torch.bfloat16,
                      device_map="cpu")
    model, info = Qwen2VLModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    kept = count_params(model)
    assert kept["total"] == 1_460_220_416 and kept["layers"] == 12 * 46_797_824
    assert model.dtype == torch.bfloat16
    meta = json.loads((out / "config.json").read_text())["puma"]
    assert meta["ret"]["added"] and meta["ret"]["id"] < config.text_config.vocab_size  # spare row, no resize


def test_loading_fails_loudly_on_missing_weights(tiny_dir, tmp_path):
    from puma.model.prune import load_qwen2vl

    out = save_pruned(tiny_dir, 3, tmp_path / "k3")
    config = Qwen2VLConfig.from_pretrained(tiny_dir)  # 8 layers: layers 3..7 are not in the k=3 checkpoint
    with pytest.raises(ValueError, match=r"k3: weights missing .*layers\.3\."):
        load_qwen2vl(out, config=config)
    assert len(load_qwen2vl(tiny_dir).language_model.layers) == 8  # lm_head left over is fine
