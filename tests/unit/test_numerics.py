"""puma.numerics: the floating-point code paths a result was computed with."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from puma.numerics import PIN_ENV, numerics, numerics_tags


def _numerics_in_child(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in PIN_ENV}
    code = "import json; from puma.numerics import numerics; print(json.dumps(numerics()))"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_numerics_report_what_torch_uses_and_the_pins_that_are_set():
    import torch

    here = numerics()
    assert here["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert here["torch"] == torch.__version__ and here["threads"] == torch.get_num_threads() and here["cpu"]
    # A pin set before torch starts changes the kernels torch dispatches to, and the record says so.
    pinned = _numerics_in_child(ATEN_CPU_CAPABILITY="default", MKL_CBWR="COMPATIBLE", OMP_NUM_THREADS="1")
    assert pinned["cpu_capability"] == "DEFAULT"
    assert pinned["pins"] == {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    assert pinned["threads"] == 1
    assert _numerics_in_child()["pins"] == {}


def test_numerics_tags_are_flat_strings_without_the_logging_process_threads():
    record = {"torch": "2.13.0+cpu", "cpu_capability": "AVX512", "threads": 2, "cpu": "Xeon", "cuda": None,
              "pins": {"MKL_CBWR": "AVX2"}}
    assert numerics_tags(record) == {"numerics.torch": "2.13.0+cpu", "numerics.cpu_capability": "AVX512",
                                     "numerics.cpu": "Xeon", "numerics.pin.MKL_CBWR": "AVX2"}
