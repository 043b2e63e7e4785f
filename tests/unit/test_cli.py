import subprocess
import sys

import pytest
from typer.testing import CliRunner

from puma.cli import app

runner = CliRunner()


def _commands(typer_app):
    import typer.main

    return typer.main.get_command(typer_app)


def test_root_help_lists_groups():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for group in ("data", "model", "train", "embed", "evaluate", "search"):
        assert group in res.output


def _walk(cmd, path=()):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, path + (name,))


@pytest.mark.parametrize("path", list(_walk(_commands(app))), ids=lambda p: " ".join(p) or "root")
def test_every_command_has_help(path):
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_config_command_reports_errors(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("model:\n  prune_layers: -1\n")
    res = subprocess.run([sys.executable, "-m", "puma.cli", "config", "--params", str(bad)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "model.prune_layers" in res.stderr
