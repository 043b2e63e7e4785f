"""PumaRetriever: sentence-transformers' API, batch invariance, order, save/load, LoRA, retrieval smoke."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from puma import PumaRetriever
from puma.model.prune import save_pruned

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (230, 210, 40),
          "purple": (140, 40, 160)}
SHAPES = ["circle", "square", "triangle"]


def _image(color, shape, size, number):
    img = Image.new("RGB", size, (235, 235, 235))
    d = ImageDraw.Draw(img)
    d.text((1, 1), str(number), fill=(0, 0, 0))  # like M-BEIR, no two candidate images are identical
    w, h = size
    box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color])
    else:
        d.polygon([(w // 2, h // 5), (w // 5, 4 * h // 5), (4 * w // 5, 4 * h // 5)], fill=COLORS[color])
    return img


def mbeir_mini_like(root, n=50, seed=0):
    """``n`` candidates in M-BEIR's three modalities: captions, images on disk, image + caption."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        caption = f"a {color} {shape} number {i} on a grey background"
        size = (rng.choice([56, 84, 112]), rng.choice([56, 84]))
        modality = ["text", "image", "image,text"][i % 3]
        item = {}
        if "image" in modality:
            path = root / f"{i}.png"
            _image(color, shape, size, i).save(path)
            item["image"] = str(path)
        if "text" in modality:
            item["text"] = caption
        items.append(item)
    return items


@pytest.fixture(scope="module")
def pruned_dir(tiny_dir, tmp_path_factory):
    return save_pruned(tiny_dir, 4, tmp_path_factory.mktemp("pruned") / "k4")


@pytest.fixture(scope="module")
def retriever(pruned_dir):
    return PumaRetriever.from_pretrained(pruned_dir)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return mbeir_mini_like(tmp_path_factory.mktemp("imgs"), 50)


def test_batch_size_and_batch_mates_do_not_change_embeddings(retriever, docs):
    items = docs[:13]
    one_by_one = np.stack([retriever.encode_document(x) for x in items])  # (13, H)
    for bs in (2, 5, 13):
        np.testing.assert_allclose(retriever.encode_document(items, batch_size=bs), one_by_one, atol=1e-5, rtol=0)
    queries = [{"text": "a red circle", "instruction": "find the picture"},
               {"image": items[1]["image"], "instruction": "find its caption"}, "just text"]
    single = np.stack([retriever.encode_query(q) for q in queries])
    np.testing.assert_allclose(retriever.encode_query(queries, batch_size=3), single, atol=1e-5, rtol=0)


def test_order_is_restored(retriever, docs):
    items = docs[:9]
    perm = np.random.default_rng(0).permutation(len(items))
    base = retriever.encode_document(items, batch_size=4)
    shuffled = retriever.encode_document([items[i] for i in perm], batch_size=4)
    np.testing.assert_allclose(shuffled, base[perm], atol=1e-5, rtol=0)


def test_encode_api_names_and_return_types(retriever):
    h = retriever.model.config.text_config.hidden_size
    one = retriever.encode_document("a red circle")
    assert one.shape == (h,) and one.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(one), 1.0, rtol=1e-5)
    t = retriever.encode_query(["a", "b c"], batch_size=1, show_progress_bar=True, convert_to_tensor=True,
                               device="cpu")
    assert isinstance(t, torch.Tensor) and t.shape == (2, h)
    raw = retriever.encode_document(["a"], normalize_embeddings=False, convert_to_numpy=False)
    assert isinstance(raw, list) and raw[0].shape == (h,) and abs(float(raw[0].norm()) - 1) > 1e-3
    with pytest.raises(ValueError, match="documents"):
        retriever.encode_document([{"text": "x", "instruction": "y"}])


def test_retrieval_smoke_each_document_finds_itself(retriever, docs):
    emb = retriever.encode_document(docs, batch_size=16)  # (50, H)
    assert emb.shape[0] == 50 and np.isfinite(emb).all()
    # Search with a second encoding made in another order and batch size: the index must still
    # return every document as its own nearest neighbour (ids, order and batching all line up).
    perm = np.random.default_rng(1).permutation(50)
    again = np.empty_like(emb)
    again[perm] = retriever.encode_document([docs[i] for i in perm], batch_size=7)
    scores = again @ emb.T  # (50, 50) cosine
    assert (scores.argmax(1) == np.arange(50)).all()
    off_diagonal = scores[~np.eye(50, dtype=bool)].reshape(50, 49)
    # A random tiny model puts image-only documents close together (cos ~0.99999), but still
    # well above fp32 round-off (~1e-7): a tie or a swapped id would fail here.
    assert (np.diag(scores) - off_diagonal.max(1) > 1e-6).all()


def test_save_and_load_round_trip_keeps_prompt_settings(retriever, tmp_path):
    from puma.config import PromptSettings

    r = PumaRetriever(retriever.model, retriever.processor, PromptSettings(max_pixels=4 * 28 * 28, max_text_tokens=12))
    out = r.save_pretrained(tmp_path / "saved")
    again = PumaRetriever.from_pretrained(out)
    assert again.prompt == r.prompt
    assert json.loads((out / "config.json").read_text())["puma"]["k"] == 4
    items = ["a long caption " * 10, {"image": Image.new("RGB", (200, 200), "red")}]
    np.testing.assert_allclose(again.encode_document(items), r.encode_document(items), atol=1e-6, rtol=0)


def test_lora_adapter_dir_loads_and_merges(pruned_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLModel

    base = Qwen2VLModel.from_pretrained(pruned_dir)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, 0, 0.3)
    peft.save_pretrained(tmp_path / "adapter")
    items = ["a blue square", {"text": "x", "image": Image.new("RGB", (56, 56), "blue")}]
    live = PumaRetriever(peft, PumaRetriever.from_pretrained(pruned_dir).processor).encode_document(items)
    merged = PumaRetriever.from_pretrained(tmp_path / "adapter")  # base read from adapter_config.json
    unmerged = PumaRetriever.from_pretrained(pruned_dir, adapter=tmp_path / "adapter", merge=False)
    plain = PumaRetriever.from_pretrained(pruned_dir).encode_document(items)
    assert isinstance(merged.model, Qwen2VLModel)
    np.testing.assert_allclose(merged.encode_document(items), live, atol=1e-5, rtol=0)
    np.testing.assert_allclose(unmerged.encode_document(items), live, atol=1e-5, rtol=0)
    assert np.abs(plain - live).max() > 1e-3
    # An unmerged retriever saves as an adapter dir that loads back with its prompt settings.
    unmerged.prompt = unmerged.prompt.model_copy(update={"max_text_tokens": 9})
    again = PumaRetriever.from_pretrained(unmerged.save_pretrained(tmp_path / "saved_adapter"))
    assert (tmp_path / "saved_adapter" / "adapter_config.json").is_file() and again.prompt.max_text_tokens == 9
    np.testing.assert_allclose(again.encode_document(items), live, atol=1e-5, rtol=0)
    assert again.get_sentence_embedding_dimension() == live.shape[1]
