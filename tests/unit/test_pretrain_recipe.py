"""Base pretraining's recipe knobs: the text phase (pretrain.text_steps, step_chunks), the slower lm_head
(pretrain.head_lr_scale, head_param_groups) and the slower vision tower (pretrain.vision_lr_scale)."""

import pytest
import torch

from puma.config import PretrainSettings
from puma.train.pretrain import head_param_groups, step_chunks


def _examples(n_text: int, n_image: int) -> list:
    text = [({"text": f"t{i}", "image": None}, True, ["red"]) for i in range(n_text)]
    image = [({"text": None, "image": f"i{i}.png"}, False, ["red"]) for i in range(n_image)]
    return [e for pair in zip(text, image) for e in pair] + text[n_image:] + image[n_text:]


def test_the_text_phase_takes_text_rows_then_every_row_from_the_start():
    examples = _examples(5, 7)
    chunks = list(step_chunks(examples, 4, 6, text_steps=3))
    assert len(chunks) == 6 and all(len(c) == 4 for c in chunks)
    text = [e for e in examples if e[0]["image"] is None]
    # text steps cycle through the text rows: 5 rows, 4 a step
    assert [e[0]["text"] for c in chunks[:3] for e in c] == [text[i % 5][0]["text"] for i in range(12)]
    # then the mixed phase starts at the first row, as a run without a text phase would
    assert [e for c in chunks[3:] for e in c] == [examples[i % len(examples)] for i in range(12)]
    assert any(e[0]["image"] is not None for c in chunks[3:] for e in c)


def test_without_a_text_phase_the_steps_are_the_plain_cycle():
    examples = _examples(3, 3)
    assert list(step_chunks(examples, 4, 3)) == [[examples[i % 6] for i in range(s * 4, s * 4 + 4)] for s in range(3)]


def test_text_phase_errors():
    with pytest.raises(ValueError, match="text_steps"):
        list(step_chunks(_examples(5, 5), 4, 3, text_steps=4))
    with pytest.raises(ValueError, match="needs 4 text rows, the data has 2"):
        list(step_chunks(_examples(2, 9), 4, 3, text_steps=1))
    with pytest.raises(ValueError, match="text_steps"):
        PretrainSettings(steps=100, text_steps=200)
    assert PretrainSettings(steps=0, text_steps=200).text_steps == 200  # steps 0 (off) keeps it


class _LM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.body = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 10, bias=False)
        self.visual = torch.nn.Linear(4, 4)  # where Qwen2-VL keeps its vision tower: model.visual

    def forward(self, ids):
        return self.lm_head(self.body(self.embed(ids) + self.visual(self.embed(ids))))

    def get_output_embeddings(self):
        return self.lm_head


def test_the_head_and_the_vision_tower_learn_at_their_own_rates_and_every_parameter_is_optimised_once():
    from puma.train.pretrain import lr_factors

    model = _LM()
    groups = head_param_groups(model, 5e-3)
    assert groups[1]["params"] == [model.lm_head.weight]
    assert groups[2]["params"] == list(model.visual.parameters())
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    # 100 steps: 5-step warm-up; the head at 0.1 x for the first 20 steps, the vision tower at 0.2 x always
    opt = torch.optim.AdamW(groups, lr=5e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factors(100, "constant", 0.1, 20, 0.2))
    lrs = []
    for _ in range(30):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.zero_grad()
        model(torch.tensor([1, 2, 3])).logsumexp(-1).sum().backward()
        opt.step()
        sched.step()
    assert lrs[0] == [pytest.approx(1e-3), pytest.approx(1e-4), pytest.approx(2e-4)]  # warm-up step 1 of 5
    assert lrs[10] == [pytest.approx(5e-3), pytest.approx(5e-4), pytest.approx(1e-3)] and lrs[19][1] == pytest.approx(5e-4)
    # the head at the full rate from step 21, the vision tower still at 0.2 x
    assert lrs[20] == [pytest.approx(5e-3), pytest.approx(5e-3), pytest.approx(1e-3)]
    # Adam's very first step moves each weight by about its group's lr
    model2 = _LM()
    opt2 = torch.optim.AdamW(head_param_groups(model2, 5e-3), lr=5e-3, weight_decay=0.0)
    torch.optim.lr_scheduler.LambdaLR(opt2, lr_factors(1, "constant", 0.1, 1, 0.2))
    before = {n: p.detach().clone() for n, p in model2.named_parameters()}
    model2(torch.tensor([1, 2, 3])).logsumexp(-1).sum().backward()
    opt2.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model2.named_parameters()}
    assert moved["lm_head.weight"] == pytest.approx(5e-4, rel=1e-3) and moved["body.weight"] == pytest.approx(5e-3, rel=1e-3)
    assert moved["visual.weight"] == pytest.approx(1e-3, rel=1e-3)
    # linear: decays to 0 after the warm-up, the head's first steps and the vision tower scaled as well
    body, head, vision = lr_factors(100, "linear", 0.5, 10, 0.25)
    assert body(99) < body(50) < body(10) == pytest.approx(1.0, abs=0.06) and head(5) == pytest.approx(0.5 * body(5))
    assert vision(50) == pytest.approx(0.25 * body(50)) and head(50) == pytest.approx(body(50))
    with pytest.raises(ValueError, match="head_lr_scale"):
        lr_factors(10, "constant", 0.0, 5)
    with pytest.raises(ValueError, match="vision_lr_scale"):
        lr_factors(10, "constant", 1.0, 5, 0.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_factors(10, "cosine")


def test_the_alignment_phase_takes_picture_only_rows_after_the_text_phase():
    examples = _examples(5, 7) + [({"text": "make it red", "image": "c.png"}, True, ["red"])]
    chunks = list(step_chunks(examples, 4, 7, text_steps=2, align_steps=3))
    assert all(e[0]["image"] is None for c in chunks[:2] for e in c)
    pictures = [e for e in examples if e[0]["image"] is not None and not e[0]["text"]]
    assert len(pictures) == 7  # the picture with text is not a picture alone
    assert [e for c in chunks[2:5] for e in c] == [pictures[i % 7] for i in range(12)]
    assert [e for c in chunks[5:] for e in c] == [examples[i % len(examples)] for i in range(8)]  # mixed from the start
    with pytest.raises(ValueError, match="align_steps"):
        list(step_chunks(examples, 4, 4, text_steps=2, align_steps=3))
    with pytest.raises(ValueError, match="needs 4 rows of a picture alone, the data has 2"):
        list(step_chunks(_examples(6, 2), 4, 3, align_steps=1))
    with pytest.raises(ValueError, match="align_steps"):
        PretrainSettings(steps=300, text_steps=200, align_steps=200)


def test_in_the_alignment_steps_the_vision_tower_has_its_own_rate():
    from puma.train.pretrain import lr_factors

    body, head, vision = lr_factors(100, "constant", 0.1, 20, 0.01, range(20, 40), 0.5)
    assert head(30) == pytest.approx(1.0)  # the head is not the tower: frozen by requires_grad, not by its rate
    assert vision(19) == pytest.approx(0.01) and vision(20) == pytest.approx(0.5) and vision(39) == pytest.approx(0.5)
    assert vision(40) == pytest.approx(0.01) and body(30) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="align_lr_scale"):
        lr_factors(10, "constant", 1.0, 5, 1.0, range(2, 4), 0.0)
