import hashlib

import torch
from PIL import Image
from transformers import Qwen2VLForConditionalGeneration

from puma.data.corpus import tokenizer_corpus
from puma.model.processor import load_processor
from puma.model.tiny import save_tiny
from puma.model.tokens import RET_TOKEN


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_tiny_loads_with_plain_transformers_and_runs_image_plus_text(tiny_dir):
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    assert (tiny_dir / "model.safetensors").is_file()
    cfg = model.config
    assert cfg.text_config.num_hidden_layers == 8 and cfg.vision_config.depth == 2
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) * 2 == cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    proc = load_processor(tiny_dir)
    tok = proc.tokenizer
    ret_id = tok.convert_tokens_to_ids(RET_TOKEN)
    assert tok.tokenize(f"x {RET_TOKEN}.")[-2] == RET_TOKEN and ret_id != tok.unk_token_id
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "A red circle."}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"{RET_TOKEN}."}]}]
    text = proc.apply_chat_template(msgs, tokenize=False)
    inputs = proc(text=[text], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    n_img = int((inputs["input_ids"] == cfg.image_token_id).sum())
    assert n_img == 4  # 16 patches merged 2x2
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == 9 and torch.isfinite(out.logits).all()
    assert (inputs["input_ids"][0] == ret_id).sum() == 1


def test_tiny_is_deterministic_for_a_seed(tmp_path):
    a = _digest(save_tiny(tmp_path / "a", seed=3, corpus=tokenizer_corpus(3)))
    b = _digest(save_tiny(tmp_path / "b", seed=3, corpus=tokenizer_corpus(3)))
    c = _digest(save_tiny(tmp_path / "c", seed=4, corpus=tokenizer_corpus(4)))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]


def test_processor_pixel_budget_override(tiny_dir):
    proc = load_processor(tiny_dir, min_pixels=3136, max_pixels=3136)
    out = proc.image_processor(images=[Image.new("RGB", (224, 224))], return_tensors="pt")
    assert out["image_grid_thw"].prod().item() <= 3136 // (14 * 14)
