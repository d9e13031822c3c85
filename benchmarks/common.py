"""Helpers shared by the benchmark scripts: machine description, peak estimate, tables."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def nominal_mhz() -> float | None:
    """The clock /proc/cpuinfo reports (under a hypervisor: the nominal clock, not turbo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1])
    except OSError:
        pass
    return None


def machine_line(device: torch.device | None = None) -> str:
    parts = [
        datetime.date.today().isoformat(),
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads",
    ]
    if device is not None and device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    return " | ".join(parts)


def measured_matmul_peak(n: int = 2048, repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """GFLOP/s of the best of ``repeats`` fp32 n x n x n products: the practical peak."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def theoretical_cpu_peak() -> tuple[float | None, str]:
    """cores x clock x fp32 FLOPs per cycle, with the reasoning spelt out."""
    flags = cpu_flags()
    mhz = nominal_mhz()
    cores = torch.get_num_threads()
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2+FMA"
    else:
        return None, "unknown vector ISA: no theoretical peak"
    per_cycle = lanes * 2 * 2  # lanes x 2 FLOPs per FMA x 2 FMA units (assumed; server cores have 2)
    if mhz is None:
        return None, f"{isa}: {per_cycle} FLOP/cycle/core, clock unknown"
    peak = cores * mhz / 1000 * per_cycle
    return peak, (
        f"{cores} threads x {mhz / 1000:.2f} GHz (nominal, /proc/cpuinfo) x {per_cycle} fp32 FLOP/cycle "
        f"({isa}: {lanes} lanes x 2 per FMA x 2 FMA units, assumed) = {peak:.0f} GFLOP/s"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    return f"{min(values):.3g}-{max(values):.3g}"


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (printable and pasteable into docs)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- contention


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine spent busy since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _live_children_cpu() -> dict:
    """CPU seconds of this process's live child processes (a worker pool that outlives one
    call is not in os.times()'s reaped-children figures), by pid."""
    out, me, tick = {}, os.getpid(), os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


class Foreign:
    """Measures how much CPU *other* processes used during a block: the machine's busy CPU
    time minus this process's (and its children's, live worker pools included). On a shared
    machine this says which timings were taken while someone else was computing."""

    def __enter__(self):
        self._busy = _busy_cpu_seconds()
        t = os.times()
        self._own = t.user + t.system + t.children_user + t.children_system
        self._children = _live_children_cpu()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall
        busy = _busy_cpu_seconds()
        t = os.times()
        children = _live_children_cpu()
        live = sum(cpu - self._children.get(pid, 0.0) for pid, cpu in children.items())
        own = t.user + t.system + t.children_user + t.children_system - self._own + live
        if busy is None or self._busy is None or wall <= 0:
            self.cores = float("nan")
        else:
            self.cores = max(0.0, (busy - self._busy - own) / wall)  # other processes' average busy cores
        return False


def wait_for_quiet(limit: float = 0.25, seconds: float = 3.0, max_wait: float = 600.0) -> float:
    """Wait until other processes have used less than ``limit`` cores over ``seconds``, at
    most ``max_wait`` seconds; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        with Foreign() as meter:
            time.sleep(seconds)
        if meter.cores < limit:
            break
    return time.perf_counter() - start


def quiet_rounds(fn, rounds: int, limit: float = 0.25, extra: int | None = None, wait_s: float = 5.0):
    """Call ``fn(r)`` until ``rounds`` calls ran while other processes used less than
    ``limit`` cores on average (a disturbed call is discarded and redone after ``wait_s``),
    or until ``rounds + extra`` calls were made. Returns (results of the quiet calls, or of
    all calls if fewer than two were quiet; a note saying which)."""
    extra = rounds if extra is None else extra
    quiet, everything, foreign = [], [], []
    attempt = 0
    while len(quiet) < rounds and attempt < rounds + extra:
        with Foreign() as meter:
            result = fn(attempt)
        everything.append(result)
        foreign.append(meter.cores)
        if meter.cores < limit:
            quiet.append(result)
        else:
            time.sleep(wait_s)
        attempt += 1
    if len(quiet) >= 2:
        return quiet, f"{len(quiet)} quiet of {attempt}"
    return everything, f"WARNING: {len(quiet)} quiet of {attempt} (others used up to {max(foreign):.1f} cores)"
