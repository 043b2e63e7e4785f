"""Start one pipeline step as a (possibly multi-process) job: ``python -m flows.launch -- puma train ...``.

Used in ``dvc.yaml`` by the steps that train or embed. The number of processes comes from
``runtime.num_processes`` (``params.yaml`` + ``PUMA_`` overrides, through :func:`puma.config.load_settings`):

* 1 process: the command is exec'ed as is (no launcher start-up cost on the embedded default);
* N > 1: ``torchrun --standalone --nproc_per_node N -m puma.cli ...`` (``runtime.launcher: torchrun``) or
  ``accelerate launch --multi_gpu --num_processes N --num_machines 1 -m puma.cli ...`` (``accelerate``),
  with ``--mixed_precision`` from ``runtime.precision``. Both set RANK / WORLD_SIZE / LOCAL_RANK, which
  the training and embedding code read.
* ``runtime.nnodes`` M > 1: the launchers' own multi-node mode with c10d rendezvous at
  ``runtime.rdzv_endpoint`` (``torchrun --nnodes M --node_rank R --rdzv_backend c10d --rdzv_endpoint H:P
  --rdzv_id ID``; accelerate ``--num_machines M --machine_rank R --main_process_ip H --main_process_port P``).
  Every node runs the same stage command with its own ``PUMA_RUNTIME__NODE_RANK``.
"""

from __future__ import annotations

import argparse
import os
import sys


def launch_argv(cmd: list[str], num_processes: int, launcher: str = "torchrun", precision: str = "no", *,
                nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str = "", rdzv_id: str = "puma") -> list[str]:
    """The argv that runs ``cmd`` (``puma ...``) on ``num_processes`` processes per node, ``nnodes`` nodes."""
    if not cmd:
        raise ValueError("no command given after --")
    if num_processes == 1 and nnodes == 1:
        return list(cmd)
    if cmd[0] != "puma":  # multi-process jobs run the puma CLI as a module under the launcher
        raise ValueError(f"multi-process launch supports only 'puma ...' commands, got {cmd[0]!r}")
    if nnodes > 1 and ":" not in rdzv_endpoint:
        raise ValueError(f"{nnodes} nodes need runtime.rdzv_endpoint host:port, got {rdzv_endpoint!r}")
    if launcher == "torchrun":
        if nnodes == 1:
            nodes = ["--standalone"]
        else:  # torchrun's own multi-node mode: every node runs this same command with its node rank
            nodes = [f"--nnodes={nnodes}", f"--node_rank={node_rank}", "--rdzv_backend=c10d",
                     f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"]
        return ["torchrun", *nodes, f"--nproc_per_node={num_processes}", "-m", "puma.cli", *cmd[1:]]
    if launcher == "accelerate":
        nodes = [f"--num_machines={nnodes}"]
        if nnodes > 1:
            host, port = rdzv_endpoint.rsplit(":", 1)
            nodes += [f"--machine_rank={node_rank}", f"--main_process_ip={host}", f"--main_process_port={port}",
                      "--rdzv_backend=c10d"]
        # accelerate's --num_processes counts all processes of all machines.
        return ["accelerate", "launch", "--multi_gpu", f"--num_processes={num_processes * nnodes}", *nodes,
                f"--mixed_precision={precision}", "-m", "puma.cli", *cmd[1:]]
    raise ValueError(f"unknown launcher {launcher!r} (torchrun | accelerate)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- puma <group> <command> [options]")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd

    from puma.config import ConfigError, load_settings

    try:
        runtime = load_settings(args.params).runtime
    except ConfigError as e:
        sys.exit(str(e))
    try:
        argv_ = launch_argv(cmd, runtime.num_processes, runtime.launcher, runtime.precision, nnodes=runtime.nnodes,
                            node_rank=runtime.node_rank, rdzv_endpoint=runtime.rdzv_endpoint, rdzv_id=runtime.rdzv_id)
    except ValueError as e:
        parser.error(str(e))
    nodes = f" x {runtime.nnodes} nodes (this: {runtime.node_rank})" if runtime.nnodes > 1 else ""
    print(f"[launch] {runtime.num_processes} process(es){nodes}: {' '.join(argv_)}", file=sys.stderr, flush=True)
    os.execvp(argv_[0], argv_)


if __name__ == "__main__":
    main()
