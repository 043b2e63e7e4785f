from puma.cli import app

app()
