"""Orchestration: the Prefect flow ``puma`` (deployment ``full-pipeline``) and the stage launcher.

Nothing here holds ML logic: the stages are defined once, in ``dvc.yaml``, and call the ``puma`` CLI.
"""
