"""When the pretrained base leaves its early collapse: puma.train.pretrain.escape_step and the seed-sweep
script around it (ablations/pretrain_escape.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from puma.train.pretrain import escape_step

SCRIPT = Path(__file__).resolve().parents[2] / "ablations" / "pretrain_escape.py"


def _rows(text_losses):
    return [{"step": i + 1, "loss_answer_text": v, "loss": 9.0} for i, v in enumerate(text_losses)]


def test_escape_step_is_the_end_of_the_first_window_below_the_threshold():
    plateau, falling = [2.30] * 300, [2.30 - 0.004 * i for i in range(200)]
    rows = _rows(plateau + falling)
    step = escape_step(rows, threshold=2.15, window=50, stride=10)
    # the window [a, a+50) has mean 2.30 - 0.004 * (a - 300 + 24.5) once a > 300: below 2.15 from a = 320
    assert step == 370
    assert escape_step(_rows(plateau), threshold=2.15) is None  # never left the collapse
    assert escape_step(_rows([2.0] * 60), threshold=2.15, window=50) == 50  # from the start
    assert escape_step(_rows([2.0] * 20), threshold=2.15, window=50) is None  # shorter than one window
    image_only = [{"step": i + 1, "loss_answer_image": 1.0} for i in range(100)]
    assert escape_step(image_only) is None  # no text rows: nothing measured


def test_pretrain_escape_script_maps_overrides_and_summarises_blocks():
    spec = importlib.util.spec_from_file_location("pretrain_escape", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.override_env(["pretrain.answer_weight=16", "pretrain.head_init=random"]) == {
        "PUMA_PRETRAIN__ANSWER_WEIGHT": "16", "PUMA_PRETRAIN__HEAD_INIT": "random"}
    with pytest.raises(ValueError, match="section.key=value"):
        mod.override_env(["answer_weight"])
    assert mod.block_means(_rows([2.0] * 100 + [1.0] * 50), "loss_answer_text") == [2.0, 1.0]


def test_a_base_that_never_left_the_collapse_is_warned_about():
    """pretrain_base records escape_step and the last window's text-answer loss; `puma model pretrain` prints
    collapse_warning's message for a base still at the marginal after a full window, and nothing otherwise."""
    from puma.train.pretrain import ESCAPE_WINDOW, _tail_mean, collapse_warning

    plateau = _rows([2.30] * 200)
    tail = _tail_mean(plateau, "loss_answer_text", ESCAPE_WINDOW)
    assert tail == pytest.approx(2.30)
    stuck = {"steps": 200, "escape_step": escape_step(plateau), "text_answer_loss_tail": tail}
    msg = collapse_warning(stuck)
    assert msg.startswith("WARNING: after 200 steps") and "2.30 over the last 50 steps" in msg
    assert "pretrain.seed" in msg
    falling = _rows([2.30 - 0.004 * i for i in range(200)])
    assert collapse_warning({"steps": 200, "escape_step": escape_step(falling),
                             "text_answer_loss_tail": _tail_mean(falling, "loss_answer_text", 50)}) is None
    short = _rows([2.30] * 20)  # under one window: nothing measured, no warning
    assert _tail_mean(short, "loss_answer_text", 50) is None
    assert collapse_warning({"steps": 20, "escape_step": escape_step(short), "text_answer_loss_tail": None}) is None
    image_only = [{"step": i + 1, "loss_answer_image": 1.0} for i in range(100)]
    assert _tail_mean(image_only, "loss_answer_text", 50) is None
