"""The pipeline rehearsal: every DVC stage on a random Qwen2-VL at its real dimensions, measured stage by stage.

``make rehearsal`` (``python bench/rehearsal.py``) runs the whole pipeline (tiny -> mbeir/nli -> prune ->
teacher cache -> stage 1 -> stage 2 -> embed -> evaluate -> report -> register) on the random 2B
(``puma model random --arch 2b``) with the ``rehearsal-2b`` profile, in a **separate workspace**: a copy
of this checkout's files (tracked and untracked-not-ignored, so uncommitted edits are rehearsed too) in
``--work`` (default ``$TMPDIR/puma-rehearsal``), made its own git repository, with the profile applied
there. This checkout's ``params.yaml``, ``artifacts/``, DVC cache and MLflow store are never touched; the
only thing written here is the table (``--report``, default ``reports/rehearsal.{json,md}``).

Per stage (each ``dvc repro --single-item STAGE`` in dependency order, a fresh process tree): wall time,
peak RSS (the largest process's ``ru_maxrss`` from ``wait4``, and the peak *sum* over the stage's process
tree sampled every 0.5 s), CPU time, the load average, and the disk written: allocated bytes (hard links
counted once) of the stage's outs, the DVC cache, the MLflow artifact store, the teacher cache, the
embeddings and the stage's transient work directory (checkpoints, sampled), and the whole workspace
before/after and at its peak. ``--cut quick`` is the cut-down version the ``slow`` test runs (same 2B
dimensions, one step per stage, MBEIR-mini at scale 0.05); ``--arch tiny`` rehearses the embedded default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARKER = ".puma-rehearsal"  # a workspace this script made (and may delete)
# Cut-down settings on top of the profile (dotted params keys). "full" is the profile as it is.
CUTS: dict[str, dict[str, object]] = {
    "full": {},
    "quick": {"data.nli_rows": 8, "stage1.max_steps": 1, "stage1.batch_size": 2, "stage2.max_steps": 1,
              "stage2.batch_size": 2},
}
# On a CPU without bf16 matrix instructions a bf16 nn.Linear runs ~5x slower than fp32 (AVX2: 2.2 vs 10.1
# GFLOP/s per thread, torch 2.13): there the rehearsal computes in fp32 (--dtype auto; the base stays bf16).
FP32 = {"model.dtype": "float32", "runtime.precision": "no"}


def cpu_has_bf16() -> bool:
    """Whether this machine has a CUDA GPU or a CPU with AVX512-BF16 / AMX-BF16 (fast bf16 matmuls)."""
    import torch

    if torch.cuda.is_available():
        return True
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))

# DVC cache link types (dvc config cache.type). DVC 3.67 links a stage's outs to the cache after `dvc repro`
# only when the FIRST type is hardlink (dvc/output.py: commit(relink=...)); "reflink,hardlink,copy" and
# "symlink,copy" leave a full copy in the workspace on a file system without reflinks (measured on ext4:
# workspace + cache = 2x). "hardlink,copy": one inode, read-only, in both places; copies across devices.
LINK_TYPES = {"repo": None, "copy": "copy", "hardlink": "hardlink,copy", "reflink": "reflink,hardlink,copy"}
AREAS = {  # workspace-relative paths whose bytes the table reports
    "artifacts": "artifacts", "dvc_cache": ".dvc/cache", "mlflow_artifacts": "mlartifacts",
    "teacher_cache": "artifacts/teacher_cache", "embeddings": "artifacts/embeddings",
    "work_dirs": "artifacts/.puma-work", "data": "data",
}


def allocated(path: Path, seen: set | None = None) -> int:
    """Allocated bytes under ``path`` (``st_blocks``), each inode counted once (hard links, and across
    calls sharing ``seen``); symlinks are not followed."""
    seen = set() if seen is None else seen
    total = 0
    try:
        stack = [path] if path.exists() or path.is_symlink() else []
        while stack:
            p = stack.pop()
            st = p.lstat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if p.is_dir() and not p.is_symlink():
                stack.extend(p.iterdir())
    except FileNotFoundError:  # a stage removed it while we walked (atomic renames, work dirs)
        pass
    return total


def disk(work: Path) -> dict[str, int]:
    """Bytes of each area and of the whole workspace (each inode once)."""
    out = {name: allocated(work / rel) for name, rel in AREAS.items()}
    out["workspace_total"] = allocated(work)
    return out


def _tree_memory(root_pid: int) -> tuple[int, int, int]:
    """(sum of the resident sets, largest ``VmHWM``, sum of ``RssAnon``) over ``root_pid`` and its
    descendants, in bytes. ``RssAnon`` leaves out file pages (memory-mapped safetensors that loading
    touched: the kernel can drop them), so it is the memory a stage really needs.

    ``VmHWM`` is a process's own peak (reset at exec), so the largest one seen is the stage process's
    peak even between samples; ``ru_maxrss`` of a child would carry over the forking parent's peak.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    rss = hwm = anon = 0
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                    kb = int(line.split()[1]) * 1024
                    if line.startswith("VmRSS"):
                        rss += kb
                    elif line.startswith("VmHWM"):
                        hwm = max(hwm, kb)
                    else:
                        anon += kb
        except OSError:
            pass
        stack.extend(children.get(pid, []))
    return rss, hwm, anon


class Sampler(threading.Thread):
    """Peak tree RSS every ``rss_every`` s and peak workspace disk every ``disk_every`` s of a running stage."""

    def __init__(self, pid: int, work: Path, rss_every: float = 0.5, disk_every: float = 10.0):
        super().__init__(daemon=True)
        self.pid, self.work, self.rss_every, self.disk_every = pid, work, rss_every, disk_every
        self.peak_rss = self.peak_hwm = self.peak_anon = self.peak_disk = self.peak_work_dirs = 0
        self.stop = threading.Event()

    def run(self) -> None:
        last_disk = 0.0
        while not self.stop.is_set():
            rss, hwm, anon = _tree_memory(self.pid)
            self.peak_rss, self.peak_hwm = max(self.peak_rss, rss), max(self.peak_hwm, hwm)
            self.peak_anon = max(self.peak_anon, anon)
            if time.monotonic() - last_disk >= self.disk_every:
                self.peak_disk = max(self.peak_disk, allocated(self.work))
                self.peak_work_dirs = max(self.peak_work_dirs, allocated(self.work / AREAS["work_dirs"]))
                last_disk = time.monotonic()
            self.stop.wait(self.rss_every)


def measured(cmd: list[str], cwd: Path, env: dict, log: Path, work: Path) -> dict:
    """Run ``cmd`` (output to ``log``) and measure it: wall, CPU, peak RSS (largest process's ``VmHWM``; the
    sampled tree sum; ``ru_maxrss``, which has the forking parent's RSS as its floor), disk."""
    before = disk(work)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid, work)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    after = disk(work)
    return {
        "rc": rc, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(sampler.peak_hwm / 2**20) or round(usage.ru_maxrss / 1024),
        "peak_tree_rss_mb": round(sampler.peak_rss / 2**20), "ru_maxrss_mb": round(usage.ru_maxrss / 1024),
        "peak_anon_mb": round(sampler.peak_anon / 2**20),
        "load_average_start": [round(x, 2) for x in load0], "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "disk_before": before, "disk_after": after,
        "disk_written": {k: after[k] - before[k] for k in after},
        "peak_workspace": max(sampler.peak_disk, before["workspace_total"], after["workspace_total"]),
        "peak_work_dirs": max(sampler.peak_work_dirs, after["work_dirs"]),
    }


def make_workspace(src: Path, work: Path, fresh: bool = True) -> None:
    """Copy ``src``'s tracked and untracked-not-ignored files to a fresh ``work`` and commit them there.

    ``fresh=False`` (``--resume``) copies the files over an existing workspace (code fixes) and keeps its
    outputs, DVC cache and MLflow store."""
    if work.exists() and not fresh:
        if not (work / MARKER).exists():
            raise SystemExit(f"{work}: not a rehearsal workspace (no {MARKER}); cannot resume there")
    elif work.exists():
        if not (work / MARKER).exists():
            raise SystemExit(f"{work}: exists and is not a rehearsal workspace (no {MARKER}); pick another --work")
        shutil.rmtree(work)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        s = src / rel
        if s.is_symlink() or not s.is_file():  # .venv link, deleted-but-tracked files
            continue
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, work / rel)
    (work / MARKER).write_text(f"made by bench/rehearsal.py from {src}\n")
    git = ["git", "-c", "user.name=puma-rehearsal", "-c", "user.email=rehearsal@localhost"]
    if fresh:
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-qm", "rehearsal workspace", "--allow-empty"], cwd=work, check=True)


def apply_cut(work: Path, profile: str, cut: dict[str, object]) -> str:
    """``puma config use PROFILE`` in the workspace, then the cut's key edits; returns the diff text."""
    from puma.config import edit_params_text, load_settings
    from puma.io import write_text_atomic
    from puma.profiles import apply_switch, plan_switch

    params = work / "params.yaml"
    switch = plan_switch(profile, params)
    diff = switch.diff(params)
    apply_switch(switch, params)
    if cut:
        write_text_atomic(params, edit_params_text(params.read_text(), cut, params))
    load_settings(params)
    return diff


def stage_outs(work: Path, stage: str) -> list[str]:
    from puma.tracking.lineage import read_lock

    return [o["path"] for o in read_lock(work).get(stage, {}).get("outs") or []]


def plan_total(work: Path, outs: list[str]) -> int | None:
    for o in outs:
        p = work / o / "resource_plan.json"
        if p.is_file():
            return json.loads(p.read_text()).get("total")
    return None


def rehearse(work: Path, arch: str, profile: str, cut: str, link: str, log: Path, resume: bool = False,
             fp32: bool = False) -> dict:
    """Run and measure every stage; ``resume`` keeps the workspace and the rows of the stages that passed."""
    from flows.puma_flow import pipeline_stages
    from puma.io import write_json_atomic

    t_start = time.perf_counter()
    partial = work.parent / f"{work.name}.rows.json"
    done = {r["stage"]: r for r in json.loads(partial.read_text()) if r["rc"] == 0} \
        if resume and partial.is_file() else {}
    make_workspace(REPO, work, fresh=not resume)
    env = dict(os.environ, PYTHONPATH=str(work), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONHASHSEED="0")
    if LINK_TYPES[link]:
        subprocess.run(["dvc", "config", "--local", "cache.type", LINK_TYPES[link]], cwd=work, env=env, check=True)
    edits = {**CUTS[cut], **(FP32 if fp32 else {})}
    diff = apply_cut(work, profile, edits)
    rows = []

    def keep(row: dict) -> None:
        rows.append(row)
        write_json_atomic(partial, rows)
        _print_row(row)

    if arch != "tiny" and f"random-{arch}" in done:
        keep(done[f"random-{arch}"])
    elif arch != "tiny":
        cmd = ["puma", "model", "random", "--arch", arch, "--out", f"artifacts/random-{arch}"]
        row = {"stage": f"random-{arch}", **measured(cmd, work, env, log, work), "outs": [f"artifacts/random-{arch}"]}
        row["outs_bytes"] = allocated(work / row["outs"][0])
        keep(row)
        if row["rc"] != 0:
            return _result(work, arch, profile, cut, link, diff, rows, t_start)
    for stage in pipeline_stages(work):
        if stage in done:
            keep(done[stage])
            continue
        row = {"stage": stage, **measured(["dvc", "repro", "--single-item", stage], work, env, log, work)}
        row["outs"] = stage_outs(work, stage)
        row["outs_bytes"] = sum(allocated(work / o) for o in row["outs"])
        row["plan_total"] = plan_total(work, row["outs"])
        keep(row)
        if row["rc"] != 0:
            break
    result = _result(work, arch, profile, cut, link, diff, rows, t_start)
    result["cut_edits"] = edits
    return result


def _cache_type(work: Path) -> str:
    out = subprocess.run(["dvc", "config", "cache.type"], cwd=work, capture_output=True, text=True, check=False)
    return out.stdout.strip() or "dvc default (reflink,copy)"


def _print_row(row: dict) -> None:
    print(f"{row['stage']:>14}: rc {row['rc']} {row['wall_s']:8.1f} s  peak RSS {row['peak_rss_mb']:6d} MB "
          f"(tree {row['peak_tree_rss_mb']} MB)  workspace +{row['disk_written']['workspace_total'] / 2**30:.2f} GiB"
          f"  load {row['load_average_end'][0]}", flush=True)


def _result(work: Path, arch: str, profile: str, cut: str, link: str, diff: str, rows: list, t_start: float) -> dict:
    return {"arch": arch, "profile": profile, "cut": cut, "cut_edits": CUTS[cut], "link_type": link,
            "dvc_cache_type": _cache_type(work), "workspace": str(work),
            "profile_diff": diff, "stages": rows, "wall_s": round(sum(r["wall_s"] for r in rows), 1),
            "cpu_s": round(sum(r["cpu_s"] for r in rows), 1), "driver_wall_s": round(time.perf_counter() - t_start, 1),
            "ok": all(r["rc"] == 0 for r in rows) and bool(rows) and rows[-1]["stage"] == "register",
            "final_disk": disk(work), "cpus": os.cpu_count(), "mem_total_gb": _mem_total_gb()}


def _mem_total_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _status(result: dict) -> str:
    if result["ok"]:
        return "ok"
    return "FAILED" if any(r["rc"] != 0 for r in result["stages"]) else "incomplete (still running or stopped)"


def table(result: dict) -> str:
    """The per-stage table as Markdown."""
    lines = [(f"Rehearsal `{result['arch']}` / profile `{result['profile']}` / cut `{result['cut']}`, DVC cache.type "
             f"`{result['dvc_cache_type']}`, {result['cpus']} CPUs, {result['mem_total_gb']} GB RAM; "
             f"stages {result['wall_s'] / 60:.1f} min wall, {result['cpu_s'] / 60:.1f} min CPU, "
             f"{_status(result)}."), "",
             ("| stage | wall s | CPU s | peak RSS MB (largest proc / tree / tree anon) | plan GiB | outs GiB | DVC cache +GiB "
             "| MLflow +GiB | work dir peak GiB | workspace +GiB (peak) | load avg |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["stages"]:
        w = r["disk_written"]
        lines.append(
            f"| {r['stage']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['peak_rss_mb']} / {r['peak_tree_rss_mb']} / {r.get('peak_anon_mb', '-')} "
            f"| {gib(r.get('plan_total'))} | {gib(r.get('outs_bytes'))} "
            f"| {gib(w['dvc_cache'])} | {gib(w['mlflow_artifacts'])} | {gib(r['peak_work_dirs'])} "
            f"| {gib(w['workspace_total'])} ({gib(r['peak_workspace'])}) | {r['load_average_end'][0]} |")
    d = result["final_disk"]
    lines += ["", (f"Final workspace: {gib(d['workspace_total'])} GiB allocated (hard links once): artifacts "
              f"{gib(d['artifacts'])}, DVC cache {gib(d['dvc_cache'])}, MLflow artifacts {gib(d['mlflow_artifacts'])}, "
              f"data {gib(d['data'])}.")]
    return "\n".join(lines)


def main() -> None:
    # Every stage and check calls `puma` / `dvc` / `git`: this interpreter's scripts come first on PATH, so
    # `.venv/bin/python bench/rehearsal.py` (as the slow test runs it) needs no activated venv.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "puma-rehearsal")
    ap.add_argument("--arch", choices=["2b", "7b", "tiny"], default="2b")
    ap.add_argument("--profile", default=None, help="default: rehearsal-2b (arch 2b/7b) or default (tiny)")
    ap.add_argument("--cut", choices=sorted(CUTS), default="full")
    ap.add_argument("--link", choices=sorted(LINK_TYPES), default="repo",
                    help="DVC cache link type of the workspace (repo: as .dvc/config says; README: disk)")
    ap.add_argument("--report", type=Path, default=REPO / "reports" / "rehearsal",
                    help="writes REPORT.json and REPORT.md")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="compute dtype; auto: the profile's bf16 where the CPU/GPU has fast bf16, else fp32")
    ap.add_argument("--resume", action="store_true",
                    help="keep the workspace of a failed run, copy the code over it, run the stages that did not pass")
    ap.add_argument("--render", action="store_true",
                    help="only write the report from the workspace's measured rows so far (a run still going)")
    ap.add_argument("--clean", action="store_true", help="remove the workspace after a successful run")
    args = ap.parse_args()
    profile = args.profile or ("default" if args.arch == "tiny" else "rehearsal-2b")
    work = args.work.resolve()
    log = work.parent / f"{work.name}.log"
    if args.render:
        rows = json.loads((work.parent / f"{work.name}.rows.json").read_text())
        from puma.io import write_json_atomic, write_text_atomic

        result = _result(work, args.arch, profile, args.cut, "as measured", "", rows, time.perf_counter())
        write_json_atomic(args.report.with_suffix(".json"), result)
        write_text_atomic(args.report.with_suffix(".md"), table(result) + "\n")
        print(table(result))
        return
    if not args.resume:
        log.write_text("")
    print(f"rehearsal workspace {work} (log {log})", flush=True)
    fp32 = args.dtype == "fp32" or (args.dtype == "auto" and args.arch != "tiny" and not cpu_has_bf16())
    if fp32:
        print("computing in fp32: no fast bf16 on this machine (--dtype bf16 forces it)", flush=True)
    result = rehearse(work, args.arch, profile, args.cut, args.link, log, args.resume, fp32)
    from puma.io import write_json_atomic, write_text_atomic

    args.report.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.report.with_suffix(".json"), result)
    md = table(result)
    write_text_atomic(args.report.with_suffix(".md"), md + "\n")
    print(md)
    if not result["ok"]:
        print(f"rehearsal FAILED; see {log}", file=sys.stderr)
        raise SystemExit(1)
    if args.clean:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
