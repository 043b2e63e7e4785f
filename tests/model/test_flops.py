"""Analytic FLOPs == torch's FlopCounterMode on the real Qwen2-VL-2B/7B architectures."""

import copy
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2VLModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from typer.testing import CliRunner

from puma.model.flops import decoder_layer_flops, forward_flops, load_config, vision_flops
from puma.model.prune import prune_layers


@pytest.mark.parametrize("name", ["2b", "7b"])
def test_decoder_flops_match_flop_counter_on_meta(name):
    config = load_config(name)
    with torch.device("meta"):
        model = Qwen2VLModel(config)  # no weights: 8.3B parameters cost nothing here
    seq, h = 296, config.text_config.hidden_size
    for k in (28, 12):
        prune_layers(model, k)
        with FlopCounterMode(display=False) as counter:
            model.language_model(
                inputs_embeds=torch.empty(1, seq, h, device="meta"),
                position_ids=torch.zeros(3, 1, seq, dtype=torch.long, device="meta"),  # (3, B, S) M-RoPE
                use_cache=False,
            )
        assert counter.get_total_flops() == k * decoder_layer_flops(config.text_config, seq)
        f = forward_flops(config, image_tokens=0, text_tokens=seq, layers=k)
        assert f.decoder == counter.get_total_flops() and f.vision == 0


@pytest.mark.parametrize("name", ["2b", "7b"])
def test_vision_flops_match_flop_counter_at_real_width(name):
    # The vision tower does not run on meta (it builds index tensors on the CPU), so run it for
    # real at the real width with 2 of its 32 blocks; the count is linear in depth.
    # eager attention: FlopCounterMode does not count the CPU flash-attention kernel sdpa picks.
    v = copy.deepcopy(load_config(name).vision_config)
    v.depth = 2
    torch.manual_seed(0)
    tower = Qwen2VisionTransformerPretrainedModel._from_config(v, attn_implementation="eager").eval()
    grids = torch.tensor([[1, 8, 8], [1, 4, 6]])  # two images: 64 and 24 patches
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size**2
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tower(torch.randn(88, patch_in), grid_thw=grids)
    assert counter.get_total_flops() == vision_flops(v, 64) + vision_flops(v, 24)


def test_forward_flops_parts_and_lm_head():
    config = load_config("7b")
    full = forward_flops(config, 300, 60)
    pruned = forward_flops(config, 300, 60, layers=12)
    assert full.vision == pruned.vision > 0
    assert full.decoder * 12 == pruned.decoder * 28
    assert forward_flops(config, 300, 60, lm_head=True).lm_head == 2 * 360 * 3584 * 152064
    with pytest.raises(ValueError, match="1..28"):
        forward_flops(config, 300, 60, layers=29)


def test_cli_flops(tmp_path):
    from puma.cli import app

    res = CliRunner().invoke(app, ["model", "flops", "--base", "7b", "--layers", "12", "--image-tokens", "300",
                                   "--text-tokens", "60", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["full"]["layers"] == 28 and out["pruned"]["layers"] == 12
    assert out["pruned"]["total"] < out["full"]["total"]
    res = CliRunner().invoke(app, ["model", "flops", "--base", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and "no Qwen2-VL config" in res.output
