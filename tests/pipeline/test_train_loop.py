"""The shared training loop on a toy model: learns, logs, and resumes to bit-identical weights."""

from __future__ import annotations

import json

import pytest
import torch

from puma.config import Settings
from puma.losses import info_nce
from puma.train.checkpoint import latest_checkpoint, list_checkpoints
from puma.train.loop import StageSpec, epoch_batches, run_training


class Pairs(torch.utils.data.Dataset):
    """Noisy (query, candidate) feature pairs of 32 latent classes."""

    def __init__(self, n=96, seed=0):
        g = torch.Generator().manual_seed(seed)
        centres = torch.randn(32, 16, generator=g)
        cls = torch.arange(n) % 32
        self.q = centres[cls] + 0.3 * torch.randn(n, 16, generator=g)
        self.c = centres[cls] + 0.3 * torch.randn(n, 16, generator=g)
        self.epochs_seen = []

    def set_epoch(self, epoch):
        self.epochs_seen.append(epoch)

    def __len__(self):
        return len(self.q)

    def __getitem__(self, i):
        return self.q[i], self.c[i]


def collate(items):
    return torch.stack([q for q, _ in items]), torch.stack([c for _, c in items])


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Linear(16, 8)
        self.drop = torch.nn.Dropout(0.1)  # uses the RNG: resume must restore it

    def forward(self, x):
        return self.drop(self.proj(x))


def make_spec(fail_at=None, **kw):
    def loss_fn(model, batch, ctx):
        if fail_at is not None and ctx.global_step == fail_at:
            raise KeyboardInterrupt("simulated crash")
        q, c = batch
        loss = info_nce(model(q), model(c), 0.1)
        return loss, {"loss": loss.item()}

    args = {"name": "toy", "model": Encoder(), "dataset": Pairs(), "collate": collate, "compute_loss": loss_fn,
            "epochs": 3, "lr": 5e-2, "batch_size": 16, "warmup_ratio": 0.1, "checkpoint_every": 4}
    args.update(kw)
    return StageSpec(**args)


@pytest.fixture
def settings():
    return Settings(tracking={"enabled": False})


def test_epoch_batches_deterministic_and_sharded():
    a = epoch_batches(50, 4, 2, 0, seed=0, epoch=1, accum=2)
    b = epoch_batches(50, 4, 2, 1, seed=0, epoch=1, accum=2)
    assert a == epoch_batches(50, 4, 2, 0, seed=0, epoch=1, accum=2)
    assert len(a) == len(b) == 6  # 50 // 8 = 6 global batches, a multiple of accum
    assert not {i for x in a for i in x} & {i for x in b for i in x}
    assert a != epoch_batches(50, 4, 2, 0, seed=0, epoch=2, accum=2)
    with pytest.raises(ValueError, match="smaller than one step"):
        epoch_batches(7, 4, 2, 0, 0, 0, 1)


def test_loop_learns_logs_and_checkpoints(tmp_path, settings):
    spec = make_spec()
    res = run_training(spec, settings, tmp_path, progress=False)
    losses = [r["loss"] for r in res.history]
    assert len(losses) == 18  # 3 epochs x (96 // 16) steps
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3
    assert spec.dataset.epochs_seen == [0, 1, 2]
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 19))
    assert {"loss", "lr", "samples_per_s", "epoch"} <= set(rows[0])
    assert rows[0]["lr"] < rows[1]["lr"]  # warmup (2 steps) then cosine decay
    assert rows[-1]["lr"] < rows[2]["lr"]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-000016", "step-000018"]


def test_interrupted_run_resumes_bit_identical(tmp_path, settings):
    full = run_training(make_spec(), settings, tmp_path / "full", progress=False).model
    with pytest.raises(KeyboardInterrupt):
        run_training(make_spec(fail_at=10), settings, tmp_path / "cut", progress=False)
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step-000008"
    res = run_training(make_spec(), settings, tmp_path / "cut", progress=False)
    assert res.resumed_from.endswith("step-000008")
    for (name, a), (_, b) in zip(full.state_dict().items(), res.model.state_dict().items()):
        assert torch.equal(a, b), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 19))


def test_grad_accumulation_matches_step_count(tmp_path, settings):
    res = run_training(make_spec(grad_accum=2, epochs=1), settings, tmp_path, progress=False)
    assert res.state.global_step == 3 and len(res.history) == 3


class RecordingLogger:
    def __init__(self, calls):
        self.calls = calls

    def log_params(self, params):
        self.calls.append(("params", params["stage"], params["total_steps"]))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", step, metrics["loss"]))

    def close(self):
        self.calls.append(("close",))


def test_loop_calls_the_step_loggers_it_is_given(tmp_path, settings):
    calls, made = [], []

    def factory(stage, out):
        made.append((stage, out))
        return RecordingLogger(calls)

    def broken(stage, out):
        raise RuntimeError("no store")

    with pytest.warns(UserWarning, match="step logger broken disabled: no store"):
        res = run_training(make_spec(epochs=1), settings, tmp_path, progress=False,
                           step_loggers=[factory, broken, lambda stage, out: None])
    assert made == [("toy", tmp_path)]
    assert calls[0] == ("params", "toy", 6) and calls[-1] == ("close",)
    assert [c[1] for c in calls[1:-1]] == list(range(1, 7))
    assert [c[2] for c in calls[1:-1]] == [r["loss"] for r in res.history]


def test_live_logging_is_a_typed_setting(monkeypatch):
    from puma import tracking

    assert len(tracking.step_loggers(Settings(tracking={"enabled": True}))) == 1
    assert tracking.step_loggers(Settings(tracking={"enabled": False})) == []
    monkeypatch.setenv("PUMA_TRACKING__LIVE", "0")
    off = Settings(tracking={"enabled": True})
    assert off.tracking.live is False and tracking.step_loggers(off) == []


@pytest.mark.slow  # importing mlflow and creating its sqlite store take ~10 s
def test_live_mlflow_logging_when_tracking_is_on(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    from puma import tracking

    settings = Settings(tracking={"enabled": True, "uri": uri, "experiment": "train-test"})
    run_training(make_spec(epochs=1, params={"mac.lambda": 0.2, "model.prune_layers": 4}), settings,
                 tmp_path / "run", progress=False, step_loggers=tracking.step_loggers(settings, tmp_path))
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("train-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["mac.lambda"] == "0.2" and run.data.params["stage"] == "toy"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 7))
    assert {"lr", "samples_per_s", "epoch"} <= set(run.data.metrics)
