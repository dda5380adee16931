# Guards that run before any job: one sweep per results folder at a time, the store
# and its ledger as one unit, the store's layout against the config, and the measure
# device. Plain Python (no package, no torch import).
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time


def config_digest():
    """A digest of the validated config (defaults filled in): what makes two runs alike."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hold_folder(folder, locks, what):
    """Hold ``folder`` for this run until this process ends (no file to clean up: the
    kernel drops the lock of a killed process). One sweep runs in a folder at a time. A run
    of another config while one runs is refused with the folder and the holder named. A
    second run of the same config waits for the running one to end and then plans again
    (`replan`): its jobs were planned before the first run wrote their outputs, and
    Snakemake removes a job's outputs before running it, so running beside the first
    would remove files the first has just written and still reads. ``locks``: the folder
    of the lock files. Returns the open lock file (keep it referenced)."""
    locks = Path(locks)
    locks.mkdir(parents=True, exist_ok=True)
    mine = f"config-{config_digest()}.lock"
    with open(locks / "guard", "a+") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            for other in sorted(locks.glob("config-*.lock")):
                if other.name == mine:
                    continue
                with open(other, "a+") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        holders = other.read_text().strip().splitlines()
                        raise ValueError(
                            f"{what} {Path(folder).resolve()} is in use by a running sweep with another "
                            f"config ({holders[-1] if holders else 'process unknown'}); wait "
                            "for it or stop it, or give this sweep its own `results:` folder "
                            "(and `store:`)."
                        ) from None
                    other.unlink()  # nobody runs that config any more
            held = open(locks / mine, "a+")
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holders = (locks / mine).read_text().strip().splitlines()
                held.close()
                print(
                    f"{what} {Path(folder).resolve()}: a sweep of this config is running "
                    f"({holders[-1] if holders else 'process unknown'}); this run waits for "
                    "it to end, then plans again (nothing is run twice)",
                    file=sys.stderr,
                    flush=True,
                )
                fcntl.flock(guard, fcntl.LOCK_UN)
                with open(locks / mine, "a+") as wait:
                    fcntl.flock(wait, fcntl.LOCK_EX)
                replan(folder, what)
            held.seek(0)
            held.truncate()
            held.write(
                f"pid {os.getpid()} on {platform.node()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n"
            )
            held.flush()
            return held
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def invoked_from():
    """The folder the command was typed in, or None when it cannot be told: the current
    folder unless `--directory` moved Snakemake away from it; then the shell's PWD when it
    is consistent with that move (joined with a relative `--directory`, it is where
    Snakemake is now; with an absolute one, only the command's own relative paths depend on
    it)."""
    moved = workflow.overwrite_workdir
    if moved is None:
        return os.getcwd()
    pwd = os.environ.get("PWD")
    if not pwd or not Path(pwd).is_dir():
        return None
    if (
        Path(moved).is_absolute()
        or (Path(pwd) / moved).resolve() == Path.cwd().resolve()
    ):
        return pwd
    return None


def replan(folder, what):
    """Start this Snakemake command again, as it was typed, from the folder it was typed in:
    it then builds its plan from the files as they are now (what another run has made since
    is not run again). Where that folder cannot be told, stop with a named error instead.
    Never returns."""
    start = invoked_from()
    if start is None:
        raise ValueError(
            f"{what} {Path(folder).resolve()}: the sweep of this config that was running "
            "has ended; run this command again to finish what it left (nothing is run twice)."
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(start)
    os.execv(sys.executable, [sys.executable, *sys.argv])


def _store_identity():
    """The store's identity from its group metadata; None when there is no store."""
    try:
        meta = json.loads((Path(STORE) / "zarr.json").read_text())
    except FileNotFoundError:
        return None
    return str(meta.get("attributes", {}).get("store_id", ""))


def store_generation():
    """How many times the store at ``STORE`` was found deleted or replaced and rebuilt: a
    parameter of the `init_store` and `aggregate` rules, so that a rebuild reruns them (and,
    through the moved-aside markers, every measure job) even where the tables made from the
    lost store still exist."""
    try:
        return int(Path(GENERATION).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def check_store():
    """The store and its ledger are one unit. When the store was deleted or replaced since
    its ledger and init marker were written, its ledger (whose markers describe cells that
    are gone) is moved aside, the init marker removed and the store generation counted up:
    this run initialises the store again and measures every cell again. An existing store
    whose layout differs from the config is refused before any job runs."""
    current = _store_identity()
    ledger = Path(f"{STORE}.ledger")
    ready = Path(STORE_READY)
    try:
        recorded = json.loads(ready.read_text()) if ready.exists() else None
    except ValueError:
        recorded = {}
    ledger_id = ledger / "store_id"
    stale = current is None and (
        ledger.exists() or ready.exists() or Path(SUMMARY).exists()
    )
    if current is not None and ledger_id.exists():
        stale = ledger_id.read_text().strip() != current
    if current is not None and recorded is not None:
        stale = (
            stale
            or recorded.get("store") != STORE
            or recorded.get("store_id") != current
        )
    if stale:
        why = "is gone" if current is None else "was replaced"
        print(
            f"store {STORE} {why}: it is initialised again and every cell measured again",
            file=sys.stderr,
        )
        if ledger.exists():
            stamp = time.strftime("%Y%m%dT%H%M%S")
            aside = ledger.with_name(f"{ledger.name}.stale-{stamp}-{os.getpid()}")
            os.replace(ledger, aside)
            print(f"  its old ledger: {aside}", file=sys.stderr)
        ready.unlink(missing_ok=True)
        Path(GENERATION).parent.mkdir(parents=True, exist_ok=True)
        Path(GENERATION).write_text(f"{store_generation() + 1}\n")
        return
    if recorded is None:
        return
    wanted = config["store_layout"]
    have = recorded.get("radii", [])
    same_radii = len(have) == len(RADII) and all(
        math.isclose(a, b, rel_tol=1e-9) for a, b in zip(have, RADII)
    )
    if recorded.get("max_directions") != wanted["max_directions"] or not same_radii:
        _fail(
            "store_layout",
            f"the store {STORE} was created with max_directions = "
            f"{recorded.get('max_directions')} and {len(have)} radii from {have[0]:g} to "
            f"{have[-1]:g}; the config asks for max_directions = "
            f"{wanted['max_directions']}, n_radii = {wanted['n_radii']}, r_min = "
            f"{wanted['r_min']:g}, r_max = {wanted['r_max']:g}. A store's layout is fixed: "
            "restore those values, or give a new `store:` path",
        )


def check_device():
    """`device: cuda…` on a machine without that CUDA device fails here, not in the first
    measure job (local runs only: cluster jobs run where the GPUs are)."""
    device = config["device"]
    if not device.startswith("cuda") or not workflow.local_exec:
        return
    index = int(device.partition(":")[2] or 0)
    probe = "import torch; print(torch.cuda.device_count())"
    python = shutil.which("python") or sys.executable
    try:
        out = subprocess.run(
            [python, "-c", probe],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        count = int(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        count = 0
    if count <= index:
        _fail(
            "device",
            f"{device} asked for, but this machine has {count} CUDA device(s); use "
            "`device: auto` (CUDA when present, else CPU) or `device: cpu`",
        )


# At parse time (the main Snakemake process only, not a cluster job's own): the store.
if workflow.is_main_process:
    check_store()


def check_declared_families():
    """Each declared family checked on its first checkpoint (`dead-directions check-family`:
    builder, probe, output, layer patterns) before any job; the error names the key."""
    for family, spec in FAMILIES.items():
        if not is_declared(family):
            continue
        present = [
            (size, s)
            for (f, size), steps in STEPS.items()
            if f == family
            for s in steps
        ]
        if not present:
            continue
        size, step = present[0]
        command = [
            "dead-directions",
            "check-family",
            "--family",
            family,
            "--size",
            size,
        ]
        command += ["--step", str(step), "--spec", json.dumps(spec, sort_keys=True)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise ValueError(lines[-1] if lines else f"check-family {family} failed")


# The open lock files of this run (kept referenced: closing one would release it).
HELD = []


# When jobs are about to run (not in a dry run; in the main Snakemake process only, not in a
# cluster job's own): hold the folders, check the device.
onstart:
    if workflow.is_main_process:
        HELD.append(
            hold_folder(RESULTS, f"{RESULTS}/.sweep-lock", "results folder")
        )
        if not Path(STORE).resolve().is_relative_to(Path(RESULTS).resolve()):
            HELD.append(hold_folder(STORE, f"{STORE}.sweep-lock", "store"))
        check_device()
        check_declared_families()
