"""Pruning is a cut: the k-layer model reproduces the full model's norm(hidden_states[k]) exactly."""

import copy
import json

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
    model.resize_token_embeddings(900, mean_resizing=False)
    tok = load_processor(tiny_dir).tokenizer
    red = tok.encode("red", add_special_tokens=False)
    info = ensure_ret_token(model, tok, "[EMB]", "token:red")
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == 900 and info["id"] < 900
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
