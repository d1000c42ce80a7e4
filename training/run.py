"""Setting a run up: device, threads, torchrun process group, output folder, logging, config JSON."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import sys
from pathlib import Path

import torch

from checkpoints import AUTOENCODER_FILE, SPLIT_FILE
from data import Split, split_fingerprint
from errors import UserInputError
from training.context import RunContext, native_bf16
from training.config import RUN_DATA_OPTIONS, RunConfig

log = logging.getLogger(__name__)


DEVICE_TYPES = ("cpu", "cuda", "mps")  # what the project runs on (MPS: Apple GPUs, in fp32)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:local_rank when CUDA is available, else mps when available, else cpu; an unknown or unavailable
    device is a UserInputError."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise UserInputError(f"unknown device {name!r}: use cpu, cuda, cuda:N, mps or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {name} requested but CUDA is not available here; use --device cpu")
    if device.type == "mps" and not _mps_available():
        raise UserInputError(f"device {name} requested but MPS (Apple's GPU) is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Join the torchrun process group if WORLD_SIZE > 1 (NCCL on CUDA, gloo on the CPU): (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return torch.distributed.get_rank(), world, device
    return 0, 1, device


def check_output_dir(path: str | Path) -> None:
    """Refuse an output folder that could not be created or written, without creating anything yet."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "not a folder" if not existing.is_dir() else "no write permission"
        raise UserInputError(
            f"output dir {path} is not writable ({problem}: {existing}); pick another with --output-dir"
        )


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder and check that it is writable."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
        for stale in path.glob(".*.tmp"):  # half-written checkpoints of a killed run; the previous files are intact
            stale.unlink()
    except OSError as err:
        raise UserInputError(
            f"output dir {path} is not writable ({err.strerror}); pick another with --output-dir"
        ) from None
    return path


LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(out_dir: Path, command: str, is_main: bool = True):
    """Hold OUT_DIR/.lock (pid, host, command) while a command writes into the folder: a second command on the same
    folder is refused with one line while the holder runs; the lock of a process that is gone (killed) is taken over,
    with a log line. Only the main process of a torchrun job holds it."""
    if not is_main:
        yield
        return
    path, host = Path(out_dir) / LOCK_FILE, platform.node()
    mine = json.dumps({"pid": os.getpid(), "host": host, "command": command})
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            _take_over_if_stale(path, host, out_dir)
    else:
        raise UserInputError(f"could not take the lock {path}: another command keeps taking it")
    with os.fdopen(fd, "w") as f:
        f.write(mine)
    try:
        yield
    finally:
        if path.is_file() and path.read_text() == mine:
            path.unlink()


def _take_over_if_stale(path: Path, host: str, out_dir: Path) -> None:
    """Remove the lock at `path` if its process is gone; else refuse with one line that names the holder."""
    try:
        holder = json.loads(path.read_text())
        pid, holder_host, command = int(holder["pid"]), holder["host"], holder["command"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("removing the unreadable lock %s", path)
        path.unlink(missing_ok=True)
        return
    if holder_host == host and not _alive(pid):
        log.warning("took over the lock of %s: its process %d (%s) is no longer running", out_dir, pid, command)
        path.unlink(missing_ok=True)
        return
    where = "here" if holder_host == host else f"on host {holder_host}; delete {path} if that process is gone"
    raise UserInputError(
        f"{out_dir} is in use by another command ({command}, pid {pid} {where}): wait for it to end or pick another "
        "--output-dir"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def resolve_paths(run: RunConfig) -> RunConfig:
    """The run options with its data folders as absolute paths, so that config.json names them from anywhere."""
    data_dir = str(Path(run.data_dir).resolve()) if run.data_dir is not None else None
    return dataclasses.replace(run, data_dir=data_dir, download_dir=str(Path(run.download_dir).resolve()))


def check_recorded_data(run: RunConfig, out_dir: Path) -> None:
    """A data folder taken from the run's config.json that is missing here: say where the path came from and which
    flag overrides it (the data loader alone would only say that it does not exist)."""
    path = out_dir / "config.json"
    recorded = json.loads(path.read_text()).get("run", {}) if path.is_file() else {}
    if run.data_dir is not None and run.data_dir == recorded.get("data_dir") and not Path(run.data_dir).exists():
        raise UserInputError(
            f"data dir {run.data_dir}, recorded in {path}, does not exist here; pass --data-dir DIR to use another"
        )


def split_record(run: RunConfig, train: Split, held: Split) -> dict:
    """What the VAE stage records of the data it trains on: the options that drew the split, and its fingerprint."""
    return {
        **{key: getattr(run, key) for key in RUN_DATA_OPTIONS},
        "train_images": len(train),
        "held_out_images": len(held),
        "fingerprint": split_fingerprint(train, held),
    }


def write_split(out_dir: Path, record: dict) -> None:
    """Record the split of a VAE stage that starts training (the VAE stage owns this file)."""
    write_json(out_dir / SPLIT_FILE, record)


def write_json(path: Path, record: dict) -> None:
    """Write a JSON record through a temporary file and a rename: a kill leaves the previous file whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def check_split(out_dir: Path, record: dict, fix: str) -> None:
    """Refuse to use a run's checkpoints with another split than the one its VAE stage trained on (recorded in
    SPLIT_FILE; runs from before the record are not checked): its held-out images would be training images, or its
    stages would mix two data sets. The same images moved to another folder are the same split."""
    path = Path(out_dir) / SPLIT_FILE
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    if recorded.get("fingerprint") == record["fingerprint"]:
        return
    keys = (*RUN_DATA_OPTIONS, "train_images", "held_out_images")
    differs = [f"{key} {recorded.get(key)} (now {record[key]})" for key in keys if recorded.get(key) != record[key]]
    raise UserInputError(
        f"{out_dir} was trained on another split of the data ({'; '.join(differs) or 'other images'}; recorded in "
        f"{path}): {fix}"
    )


@contextlib.contextmanager
def run_folder(out_dir: Path, command: str):
    """Hold the lock of a trained run's folder while `command` reads and writes there; a folder without a run, or one
    this user cannot write to, is refused with one line before any work is done."""
    out_dir = Path(out_dir)
    if not (out_dir / AUTOENCODER_FILE).is_file():
        raise UserInputError(
            f"no trained run in {out_dir}: checkpoint not found: {out_dir / AUTOENCODER_FILE} (train one with "
            f"python main.py --output-dir {out_dir}, or pass the run's folder as --output-dir)"
        )
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UserInputError(
            f"output dir {out_dir} is not writable: {command} writes its results there; run it on a writable copy "
            f"(cp -r {out_dir} NEW_DIR, then --output-dir NEW_DIR)"
        )
    with folder_lock(out_dir, command):
        yield


@contextlib.contextmanager
def output_folder(out_dir: Path, command: str):
    """Create `out_dir` if need be and hold its lock while `command` writes there (it needs no trained run)."""
    check_output_dir(out_dir)
    with folder_lock(prepare_output_dir(out_dir), command):
        yield


def setup_logging(out_dir: Path | None, is_main: bool) -> None:
    """Log INFO to stderr (rank 0 only) and to out_dir/log.txt."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)] if is_main else []
    if out_dir is not None and is_main:
        handlers.append(logging.FileHandler(out_dir / "log.txt"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers or [logging.NullHandler()],
        force=True,
    )


def log_to_file(message: str) -> None:
    """Write an ERROR line to the run's log.txt, where one is open, without printing it again on stderr."""
    record = logging.makeLogRecord({"name": "main", "levelname": "ERROR", "levelno": logging.ERROR, "msg": message})
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers) where one is set.
    torch's own default counts the machine's cores, which oversubscribes a container limited to fewer."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" if none
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def make_context(run: RunConfig) -> RunContext:
    """Threads, process group and device of a run, as one RunContext; the output folder is only named here (training
    creates it with prepare_output_dir once its input has proved valid; sample and evaluate read an existing one)."""
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    elif "OMP_NUM_THREADS" not in os.environ:  # torchrun sets it (1 per process); a user may too
        torch.set_num_threads(available_cpus())
    rank, world, device = init_distributed(run.device)
    out_dir = Path(run.output_dir)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return RunContext(
        device=device,
        out_dir=out_dir,
        amp=run.amp and native_bf16(device),
        log_every=run.log_every,
        checkpoint_every=run.checkpoint_every,
        resume=run.resume,
        visualize_every=run.visualize_every,
        rank=rank,
        world_size=world,
    )


def precision_note(amp_requested: bool, ctx: RunContext) -> str:
    """One line for the log: the precision training runs in, and why where --amp asked for bf16 and it is off."""
    if ctx.amp:
        return f"precision: bf16 autocast on {ctx.device.type}"
    if not amp_requested:
        return "precision: fp32 (--no-amp)"
    if ctx.device.type == "cpu":
        return (
            "precision: fp32, this CPU has no native bf16 (AVX512-BF16 or AMX), so training takes about 2.5x as long"
            " as on a CPU with it"
        )
    return f"precision: fp32, {ctx.device} has no native bf16"


def write_config(configs: dict, ctx: RunContext, name: str = "config.json") -> None:
    """Save the resolved configuration and the facts of this run as JSON in the output folder (unless this command
    trains nothing: the record of how the run was trained stays as it is)."""
    if not ctx.is_main or not ctx.records:
        return
    record = {k: dataclasses.asdict(v) for k, v in configs.items()}
    record["run_facts"] = {
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "bf16_autocast": ctx.amp,
        "torch": torch.__version__,
        "python": platform.python_version(),
        **ctx.extra,
    }
    write_json(ctx.out_dir / name, record)
