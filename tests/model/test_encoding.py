"""Prompts, collate and ret_states: what training and evaluation feed the model."""

import pytest
import torch
from PIL import Image
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLModel

from puma.config import PromptSettings
from puma.model.encoding import MODEL_INPUTS, collate, ret_states
from puma.model.processor import load_processor
from puma.model.prompts import as_item, build_messages, normalize_text, render_prompt
from puma.model.ret import ret_positions

PROMPT = PromptSettings(max_pixels=16 * 28 * 28)


@pytest.fixture(scope="module")
def proc(tiny_dir):
    return load_processor(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return Qwen2VLModel.from_pretrained(tiny_dir).eval()


def _user_text(item, is_query, prompt=PROMPT, tok=None):
    return build_messages(as_item(item, 0, is_query), is_query, prompt, tok)[0]["content"][-1]["text"]


def test_suffix_names_the_real_modality_and_reference_mode():
    img = Image.new("RGB", (28, 28))
    assert _user_text("a cat", False).endswith("Summarize above sentence in one word: ")
    assert _user_text({"image": img}, False) == "\nSummarize above image in one word: "
    assert "image and sentence" in _user_text({"image": img, "text": "x"}, False)
    # Decision 4: an instructed image-only query is still "image"; the reference says "image and sentence".
    q = {"image": img, "instruction": "Find a similar photo"}
    assert _user_text(q, True).endswith("above image in one word: ")
    ref = PromptSettings(suffix="reference")
    assert _user_text(q, True, ref).endswith("above image and sentence in one word: ")


def test_queries_carry_the_instruction_documents_do_not(proc):
    q = render_prompt(proc, as_item({"text": "red dress", "instruction": "retrieve a photo"}, 0, True), True, PROMPT)
    assert "<|im_start|>user\nRetrieve a photo\nred dress.\nSummarize above sentence" in q
    assert q.endswith("<|im_start|>assistant\n[RET].<|im_end|>\n")
    assert q.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    with pytest.raises(ValueError, match="item 0: documents"):
        as_item({"text": "x", "instruction": "y"}, 0, False)
    with pytest.raises(ValueError, match="item 2: needs text or an image"):
        as_item({"text": ""}, 2, True)


def test_text_normalisation_and_truncation(proc):
    assert normalize_text('  a "quoted"\r line ') == "A quoted line."
    assert normalize_text("Done.") == "Done."
    long = " ".join(["circle"] * 100)
    cut = normalize_text(long, proc.tokenizer, 8)
    assert len(proc.tokenizer.encode(cut[:-1], add_special_tokens=False)) <= 8 and cut.endswith(".")
    # A literal [RET] in user text must not add a second embedding position.
    assert "[RET]" not in _user_text("look [RET] here", False)


def test_collate_left_pads_keeps_mm_types_and_finds_ret(proc, tmp_path):
    path = tmp_path / "blue.png"
    Image.new("RGB", (100, 70), "blue").save(path)
    items = [{"image": str(path), "text": "a blue square"}, "tiny", {"image": path}]
    b = collate(proc, items, False, PROMPT)
    assert set(MODEL_INPUTS) <= set(b)
    ids, mask = b["input_ids"], b["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[1, 0] == 0)  # left padding
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert torch.equal(b["mm_token_type_ids"] == 1, ids == image_id)
    assert b["image_grid_thw"].shape == (2, 3)
    ret_id = proc.tokenizer.convert_tokens_to_ids("[RET]")
    assert (ids[torch.arange(3), b["ret_positions"]] == ret_id).all()
    with pytest.raises(FileNotFoundError, match="item 0: cannot read image .*missing.png"):
        collate(proc, [{"image": tmp_path / "missing.png"}], False, PROMPT)


def test_ret_positions_left_and_right_padding():
    ret = 7
    left = torch.tensor([[0, 0, 5, 7, 1], [5, 7, 2, 7, 1]])
    mask_l = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert ret_positions(left, mask_l, ret).tolist() == [3, 3]
    right = torch.tensor([[5, 7, 1, 7, 7]])  # pad id equal to [RET] must not count
    assert ret_positions(right, torch.tensor([[1, 1, 1, 0, 0]]), ret).tolist() == [1]
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        ret_positions(torch.tensor([[1, 2]]), None, ret)


def test_ret_states_same_for_model_forcg_and_peft(tiny_dir, proc, model):
    from peft import LoraConfig, get_peft_model

    items = [{"text": "a green triangle", "image": Image.new("RGB", (56, 84), "green")}, "two words"]
    b = collate(proc, items, True, PROMPT)
    forcg = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        base = ret_states(model, b)  # (B, H)
        assert base.shape == (2, model.config.text_config.hidden_size)
        torch.testing.assert_close(ret_states(forcg, b), base)
        torch.testing.assert_close(ret_states(forcg.model, b), base)
        # The state is the final-norm hidden state at [RET] (not normalised to unit length).
        hidden = model(**{k: b[k] for k in MODEL_INPUTS}).last_hidden_state
        torch.testing.assert_close(base, hidden[torch.arange(2), b["ret_positions"]])
        assert not torch.allclose(base.norm(dim=-1), torch.ones(2))
        peft = get_peft_model(forcg, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        torch.testing.assert_close(ret_states(peft, b), base)  # LoRA B starts at zero
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        live = ret_states(peft, b)
        assert not torch.allclose(live, base, atol=1e-3)  # the adapter is in the path
        merged = ret_states(peft.merge_and_unload(), b)
    torch.testing.assert_close(merged, live, atol=1e-5, rtol=1e-5)


def test_ret_states_without_collate_needs_ret_id(proc, model):
    b = collate(proc, ["hello"], True, PROMPT)
    plain = {k: b[k] for k in MODEL_INPUTS if k in b}
    with torch.no_grad():
        with pytest.raises(ValueError, match="ret_positions"):
            ret_states(model, plain)
        got = ret_states(model, plain, ret_id=proc.tokenizer.convert_tokens_to_ids("[RET]"))
        torch.testing.assert_close(got, ret_states(model, b))


def test_mrope_positions_ignore_padding_and_are_3d_for_images(proc, model):
    from puma.model.encoding import mrope_positions

    items = ["a much longer sentence with many more words in it", "short",
             {"image": Image.new("RGB", (112, 56), "red"), "text": "x"}]
    b = collate(proc, items, False, PROMPT)
    pos = mrope_positions(model, b)  # (3, B, S)
    mask = b["attention_mask"].bool()
    for row in range(3):
        valid = pos[:, row, mask[row]]
        alone = mrope_positions(model, collate(proc, [items[row]], False, PROMPT))[:, 0]
        assert torch.equal(valid, alone)  # padding does not shift a row's positions
    img = b["mm_token_type_ids"][2].bool()
    assert not torch.equal(pos[1, 2, img], pos[2, 2, img])  # height != width positions: real M-RoPE
    assert torch.equal(pos[0, 1], pos[1, 1])  # text-only rows: the three axes agree


def test_mixed_text_batch_is_exactly_batch_invariant(proc, model):
    items = ["one", "two words here", "a rather long sentence about a purple square"]
    with torch.no_grad():
        together = ret_states(model, collate(proc, items, False, PROMPT))
        alone = torch.cat([ret_states(model, collate(proc, [x], False, PROMPT)) for x in items])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_pixel_budget_comes_from_prompt_settings(proc):
    big = Image.new("RGB", (448, 448), "red")
    small = collate(proc, [{"image": big}], False, PromptSettings(min_pixels=3136, max_pixels=3136))
    wide = collate(proc, [{"image": big}], False, PromptSettings(min_pixels=3136, max_pixels=16 * 3136))
    assert small["image_grid_thw"].prod().item() * 14 * 14 <= 3136
    assert wide["image_grid_thw"].prod().item() > small["image_grid_thw"].prod().item()
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((small["input_ids"] == image_id).sum()) == small["image_grid_thw"].prod().item() // 4
