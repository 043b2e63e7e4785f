"""``puma model ...``: the embedded tiny checkpoint, layer pruning and FLOPs."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from puma.cli.common import settings_or_exit

app = typer.Typer(no_args_is_help=True)


@app.command("tiny")
def tiny(
    out: Path = typer.Option(..., "--out", help="directory to write the checkpoint to"),
    seed: int = typer.Option(0, "--seed", help="weights and tokenizer seed"),
    layers: int = typer.Option(8, "--layers", help="decoder layers of the tiny model"),
    base: str = typer.Option(None, "--base", help="model.base: unless it is OUT or the embedded pretrained base, "
                             "write only a marker file"),
) -> None:
    """Write the tiny random Qwen2-VL (safetensors + tokenizer with [RET] + processor) to OUT.

    With ``--base`` naming another checkpoint than OUT or ``artifacts/pretrained`` (which `puma model
    pretrain` builds from it) - a hub id, a random 2B - the tiny model is not needed: OUT gets only
    ``NOT_BUILT.json`` saying so (the DVC stage stays cheap and its output defined).
    """
    from puma.config import PRETRAINED_DIR

    if base is not None and Path(base).resolve() not in (out.resolve(), Path(PRETRAINED_DIR).resolve()):
        from puma.io import atomic_dir, write_json_atomic

        with atomic_dir(out) as tmp:
            write_json_atomic(tmp / "NOT_BUILT.json", {"model.base": base, "reason": "the pipeline uses model.base, "
                              "not the embedded tiny model"})
        typer.echo(f"model.base is {base}: tiny model not built ({out}/NOT_BUILT.json)")
        return
    from puma.data.corpus import tokenizer_corpus
    from puma.model.tiny import save_tiny

    path = save_tiny(out, seed=seed, num_layers=layers, corpus=tokenizer_corpus(seed))
    typer.echo(f"wrote tiny Qwen2-VL ({layers} layers, seed {seed}) to {path}")


@app.command("random")
def random_arch(
    arch: str = typer.Option(..., "--arch", help="2b | 7b (the bundled Qwen2-VL hub configs)"),
    out: Path = typer.Option(..., "--out", help="directory to write the checkpoint to"),
    seed: int = typer.Option(0, "--seed", help="weights and tokenizer seed"),
) -> None:
    """Write a random-weight Qwen2-VL of the real 2B/7B architecture (bf16 safetensors, tokenizer with [RET])."""
    from puma.model.random_arch import ARCHES, save_random_arch

    if arch not in ARCHES:
        typer.echo(f"--arch must be one of {', '.join(ARCHES)}, got {arch!r}", err=True)
        raise typer.Exit(2)
    from puma.data.corpus import tokenizer_corpus

    path = save_random_arch(arch, out, tokenizer_corpus(seed), seed=seed)
    typer.echo(f"wrote random Qwen2-VL-{arch.upper()} (bf16, seed {seed}) to {path}")


@app.command("pretrain")
def pretrain(
    base: str = typer.Option("artifacts/tiny", "--base", help="the full-depth checkpoint to pretrain (the tiny stage's)"),
    data: Path = typer.Option(None, "--data", help="MBEIR-mini root (train split) [params data.root]"),
    out: Path = typer.Option(Path("artifacts/pretrained"), "--out", help="directory for the pretrained checkpoint"),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params file (pretrain, prompt)"),
    steps: int = typer.Option(None, "--steps", help="training steps [params pretrain.steps]"),
) -> None:
    """Pretrain the embedded tiny base as a small LM of MBEIR-mini's world (retriever prompt form, next-token).

    A base without the tiny model (``artifacts/tiny/NOT_BUILT.json``: a hub base) is pretrained already:
    OUT gets only ``NOT_BUILT.json``.
    """
    from puma import distributed
    from puma.io import atomic_dir, write_json_atomic
    from puma.train.pretrain import collapse_warning, load_pairs, pretrain_base, recipe_kwargs

    settings = settings_or_exit(params)
    cfg = settings.pretrain
    steps = cfg.steps if steps is None else steps
    hub_base = (Path(base) / "NOT_BUILT.json").is_file()
    if (hub_base or steps == 0) and distributed.launched()[0] != 0:
        return  # nothing to train (launched on several processes): rank 0 writes OUT alone
    if hub_base:
        with atomic_dir(out) as tmp:
            write_json_atomic(tmp / "NOT_BUILT.json", {"model.base": settings.model.base,
                              "reason": "a hub base is pretrained already"})
        typer.echo(f"{base}: no embedded tiny model; nothing to pretrain ({out}/NOT_BUILT.json)")
        return
    if steps == 0:
        # Off: the pipeline's base is the tiny model itself, file for file.
        with atomic_dir(out) as tmp:
            for f in sorted(Path(base).iterdir()):
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        typer.echo(f"pretrain.steps is 0: {out} is {base} unchanged")
        return
    pairs = load_pairs(data or settings.data.root, cfg.seed)
    try:  # under torchrun (runtime.num_processes > 1, flows.launch) every rank trains its slice of each step
        record = pretrain_base(base, out, pairs, settings.prompt, **recipe_kwargs(cfg, steps=steps),
                               ret_token=settings.model.ret_token, log=typer.echo)
        if distributed.rank() == 0:
            typer.echo(f"pretrained {base} for {record['steps']} steps on {record['processes']} process(es) "
                       f"({record['seconds']} s, final loss {record['final_loss']}) -> {out}")
            if warning := collapse_warning(record):
                typer.echo(warning, err=True)
    finally:
        distributed.leave_group()


@app.command("prune")
def prune(
    base: str = typer.Option(None, "--base", help="checkpoint dir or hub id [params model.base]"),
    layers: int = typer.Option(None, "--layers", help="k: decoder layers to keep [params model.prune_layers]"),
    out: Path = typer.Option(..., "--out", help="directory for the pruned checkpoint"),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params file (ret_token, ret_init, dtype)"),
    device_map: str = typer.Option(None, "--device-map", help="e.g. auto / cuda:0 (large bases; never two copies)"),
) -> None:
    """Keep vision tower, embeddings, layers 0..k-1 and the final norm; save a standalone Qwen2VLModel."""
    import json

    import torch

    from puma.model.prune import count_params, save_pruned

    s = settings_or_exit(params).model
    base = base or s.base
    k = layers or s.prune_layers
    try:
        path = save_pruned(base, k, out, ret_token=s.ret_token, ret_init=s.ret_init,
                           dtype=getattr(torch, s.dtype), device_map=device_map)
    except (ValueError, FileNotFoundError, OSError) as e:
        typer.echo(f"prune failed: {e}", err=True)
        raise typer.Exit(1) from None
    meta = json.loads((path / "config.json").read_text())["puma"]
    from transformers import Qwen2VLModel

    with torch.device("meta"):
        from transformers import Qwen2VLConfig

        counts = count_params(Qwen2VLModel(Qwen2VLConfig.from_pretrained(path)))
    typer.echo(f"pruned {base} ({meta['depth']} layers) to k={k} -> {path}; [RET] id {meta['ret']['id']} "
               f"({'added, init ' + meta['ret']['init'] if meta['ret']['added'] else 'existing'}); "
               f"{counts['total']:,} parameters")


@app.command("flops")
def flops(
    base: str = typer.Option("7b", "--base", help="2b | 7b (bundled hub configs) | config.json | checkpoint dir"),
    layers: int = typer.Option(12, "--layers", help="k: decoder layers of the pruned model"),
    image_tokens: int = typer.Option(300, "--image-tokens", help="merged visual tokens per sample (paper budget: 300)"),
    text_tokens: int = typer.Option(60, "--text-tokens", help="all other tokens: template + instruction + text"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Forward FLOPs per sample, full depth vs the first K layers (vision tower included, no lm_head)."""
    import json

    from puma.model.flops import forward_flops, load_config

    try:
        config = load_config(base)
    except FileNotFoundError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    full = forward_flops(config, image_tokens, text_tokens)
    pruned = forward_flops(config, image_tokens, text_tokens, layers=layers)
    if as_json:
        typer.echo(json.dumps({"full": full.as_dict(), "pruned": pruned.as_dict()}, indent=2))
        return
    typer.echo(f"{base}: one sample = {image_tokens} image tokens + {text_tokens} text tokens "
               f"(sequence {image_tokens + text_tokens}); TFLOPs, forward, no lm_head")
    typer.echo(f"{'model':<10}{'layers':>7}{'vision':>9}{'decoder':>9}{'total':>9}")
    for name, f in (("full", full), ("pruned", pruned)):
        typer.echo(f"{name:<10}{f.layers:>7}{f.vision / 1e12:>9.3f}{f.decoder / 1e12:>9.3f}{f.total / 1e12:>9.3f}")
    typer.echo(f"reduction: {100 * (1 - pruned.total / full.total):.1f}%")
