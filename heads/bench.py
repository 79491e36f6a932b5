"""`heads bench`: seconds per training step of every head and simulator back end, in one run.

The paper's Table III: the median time of one training step (value and gradient, then the update;
batch 32, after warm-up steps) for CDL and DQC at 8, 14 and 19 qubits. Timed here, per task
(number of qubits — any n ≥ 2, e.g. 16 or 20–24 on a GPU) and back end:

- `cdl`: Dense 2048→n, mean binary cross-entropy from logits, Adam update (`heads.models.CDL`); the
  step is `heads.train.make_train_step`, the one `heads train` runs.
- `dqc`: Dense 2048→n, tanh·π/2, circuit ⟨Z⟩, Dense n→n, the same loss and update (`heads.models.DQC`).
- `circuit`: value and gradient (in angles and weights) of the circuit alone.

Every record names the exact `method` its circuit ran: for `fast`, `heads.quantum.method(n, layers)`
(mps, halves or statevector); for an explicit back end, the back end.
- with `--with-backbone`, also `cdl+resnet50` and `dqc+resnet50`: a random-weight ResNet50 and the
  head trained end to end on 224×224 images (`heads.finetune.make_step`, the paper's setting).

Steps are jitted (parameters donated, as in training) and compiled before timing; the compile time
is reported beside the median, the standard deviation and the peak memory. Each cell runs in its
own process by default, so its peak memory is its own: on a CPU the process's peak RSS above its
RSS just before compiling (imports, parameters and inputs already in place; so compilation
counts), on a GPU the device's `peak_bytes_in_use`. Without isolation
(`--no-isolate`) the peak is XLA's memory analysis of the compiled step (its temporary arena +
arguments + outputs − donated buffers), which every record also carries as `xla_memory_mib`.

A slow cell stops early: warm-up ends after `max_seconds / 4` and timing after `max_seconds` (at
least one timed step), and the record says how many steps it timed (`timed_steps`, `capped`). Speed claims are ratios within
one run (`ratio_to_fastest`: this back end's median over the fastest back end's, per task and
model), since the machine's load moves absolute times.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cxrfeat.errors import UserError

MODELS = ("cdl", "dqc", "circuit")
# Simulators that researchers would otherwise pick, timed beside ours (the circuit alone; bench only).
ANCHORS = ("tensorcircuit",)
BACKBONE_SUFFIX = "+resnet50"
EMBEDDING_DIM = 2048
LEARNING_RATE = 1e-4
FORMAT = "heads-bench/1"


@dataclass(frozen=True)
class Cell:
    """One timed program: a model (or the circuit alone) at n qubits on one back end."""

    model: str
    qubits: int
    backend: str  # "-" for CDL, which has no circuit
    layers: int = 3
    batch_size: int = 32
    warmup: int = 10
    steps: int = 30
    max_seconds: float = 60.0
    noise: str = ""  # a noise model (file or preset) for the circuit cells: `heads.noise`
    trajectories: int = 1  # per example, for a noisy circuit on the MPS


def plan(tasks, backends, models, *, with_backbone: bool = False, **settings) -> list[Cell]:
    """The cells of one run, in order: per task, CDL once, then DQC and the circuit per back end."""
    cells = []
    for n in tasks:
        for model in models:
            names = [model] + ([model + BACKBONE_SUFFIX] if with_backbone and model != "circuit" else [])
            for name in names:
                for backend in (["-"] if model == "cdl" else backends):
                    if backend in ANCHORS and model != "circuit":
                        continue  # an anchor times the circuit alone
                    cells.append(Cell(name, n, backend, **settings))
    return cells


# ---------------------------------------------------------------- the step of each cell


def _program(cell: Cell):
    """(jitted step, its arguments, advance) where advance(outputs, args) gives the next arguments."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from heads.models import CDL, DQC
    from heads.quantum import expvals

    rng = np.random.default_rng(0)
    b, n = cell.batch_size, cell.qubits
    labels = jnp.asarray(rng.random((b, n)) < 0.2, jnp.int8)
    base = cell.model.removesuffix(BACKBONE_SUFFIX)

    if cell.model == "circuit":
        angles = jnp.asarray(rng.uniform(-math.pi / 2, math.pi / 2, (b, n)), jnp.float32)
        weights = jnp.asarray(rng.uniform(0, 2 * math.pi, (cell.layers, n)), jnp.float32)
        cotangent = jnp.asarray(rng.normal(size=(b, n)), jnp.float32)

        circuit = _tensorcircuit if cell.backend == "tensorcircuit" else functools.partial(expvals, backend=cell.backend)
        if cell.noise:
            from heads.noise import NoiseModel

            model = NoiseModel.load(cell.noise)
            keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(b))
            circuit = functools.partial(expvals, backend=cell.backend, noise=model,
                                        **({} if cell.backend == "density" else {"key": keys, "trajectories": cell.trajectories}))

        def circuit_step(angles, weights, cotangent):
            loss = lambda x, w: jnp.vdot(circuit(x, w), cotangent)  # noqa: E731
            return jax.value_and_grad(loss, argnums=(0, 1))(angles, weights)

        return jax.jit(circuit_step), (angles, weights, cotangent), lambda out, args: args

    head = CDL(n) if base == "cdl" else DQC(n, layers=cell.layers, backend=cell.backend)
    optimizer = optax.adam(LEARNING_RATE)
    if cell.model.endswith(BACKBONE_SUFFIX):
        from heads.finetune import init_params, make_step

        backbone = _random_backbone()
        params = init_params(backbone, head, seed=1)
        images = jnp.asarray(rng.normal(size=(b, 224, 224, 3)), jnp.float32)
        keys = jax.random.split(jax.random.key(0), b)
        step = make_step(backbone, head, optimizer)
        args = (params, optimizer.init(params), backbone.batch_stats, images, labels, keys)
        return step, args, lambda out, args: (out[0], out[1], *args[2:])

    from heads.train import head_logits, make_train_step, optimizer

    optimizer = optimizer(LEARNING_RATE)  # training's optimizer (its learning rate in the state)
    params = head.init(jax.random.key(1), jnp.zeros((1, EMBEDDING_DIM), jnp.float32))["params"]
    embeddings = jnp.asarray(rng.normal(size=(b, EMBEDDING_DIM)), jnp.float32)
    rows = jnp.ones((b,), bool)
    train_step = make_train_step(head_logits(head), optimizer)  # the step that `heads train` scans

    def head_step(params, opt_state, x, y):
        params, opt_state, loss, _ = train_step(params, opt_state, x, y, rows)
        return params, opt_state, loss

    args = (params, optimizer.init(params), embeddings, labels)
    return jax.jit(head_step, donate_argnums=(0, 1)), args, lambda out, args: (out[0], out[1], *args[2:])


def _tensorcircuit(angles, weights):
    """The DQC circuit in TensorCircuit-NG (JAX back end, state vector, complex64), vmapped over the batch."""
    import jax
    import jax.numpy as jnp
    import tensorcircuit as tc

    from heads.ring import ring_pairs

    tc.set_backend("jax")
    n = angles.shape[1]

    def one(x):
        c = tc.Circuit(n)
        for i in range(n):
            c.h(i)
            c.ry(i, theta=x[i])
        for layer in weights:
            for i in range(n):
                c.ry(i, theta=layer[i])
            for a, b in ring_pairs(n):
                c.cnot(a, b)
        return jnp.stack([jnp.real(c.expectation_ps(z=[i])) for i in range(n)])

    return jax.vmap(one)(angles)


def _random_backbone():
    from cxrfeat.errors import UserError

    try:
        from cxrfeat.backbone import load_backbone
    except ImportError as e:
        raise UserError(f"--with-backbone needs cxrfeat.backbone.load_backbone, which is missing ({e})") from None
    return load_backbone("random", seed=0)


def run_cell(cell: Cell, *, isolated: bool = False) -> dict:
    """Compile and time one cell in this process; the record of `heads bench`."""
    import warnings

    import jax
    import numpy as np

    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    device = jax.devices()[0]
    step, args, advance = _program(cell)
    jax.block_until_ready(jax.jit(lambda x: x + 1)(np.zeros(4)))  # start the compiler and runtime threads
    rss_before = _current_rss()  # imports, parameters, inputs and runtime in place; compiling and stepping to come
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - start
    xla_bytes = _xla_bytes(compiled)
    flops = counted_flops(cell, compiled)

    def one(args):
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        return time.perf_counter() - t, advance(out, args)

    warm, times = 0.0, []
    for _ in range(cell.warmup):
        dt, args = one(args)
        warm += dt
        if warm > cell.max_seconds / 4:
            break
    while len(times) < cell.steps and (not times or sum(times) < cell.max_seconds):
        dt, args = one(args)
        times.append(dt)

    median = float(np.median(times))
    yardstick = matmul_yardstick()
    record = {**asdict(cell), "method": _method(cell), "status": "ok", "timed_steps": len(times), "capped": len(times) < cell.steps,
              "median_s": median, "sd_s": float(np.std(times, ddof=1)) if len(times) > 1 else 0.0,
              "min_s": float(np.min(times)), "compile_s": compile_s,
              # What the step costs in arithmetic, and this machine's yardstick timed in the same process:
              # `x_matmul` = the step's time in 512^3 float32 matmuls (a regression shows as a ratio).
              "flops": flops, "gflops_per_s": flops / median / 1e9 if flops else None,
              "matmul_s": yardstick["median_s"], "matmul_gflops_per_s": yardstick["gflops_per_s"],
              "x_matmul": median / yardstick["median_s"]}
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats and isolated:
        peak, source = stats["peak_bytes_in_use"], "device peak_bytes_in_use (this cell's process)"
    elif isolated:
        peak, source = _peak_rss() - rss_before, "peak RSS of this cell's process above its RSS before compiling"
    else:
        peak, source = xla_bytes, "XLA memory analysis of the compiled step (temporaries + arguments + outputs)"
    record |= {"peak_memory_mib": _mib(peak), "xla_memory_mib": _mib(xla_bytes), "peak_memory_source": source}
    return record


YARDSTICK_N = 512


def matmul_yardstick(n: int = YARDSTICK_N, steps: int = 30) -> dict:
    """This process's yardstick: the median seconds of an n x n x n float32 matmul (jitted, after warm-up),
    and its rate (2 n^3 flops)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.normal(size=(n, n)), jnp.float32) for _ in range(2))
    f = jax.jit(jnp.matmul).lower(a, b).compile()
    for _ in range(5):
        jax.block_until_ready(f(a, b))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {"n": n, "median_s": median, "gflops_per_s": 2 * n**3 / median / 1e9}


def counted_flops(cell: Cell, compiled) -> float | None:
    """The step's FLOPs by XLA's cost analysis. XLA counts a loop's body once, so a step whose circuit
    scans over MPS sites is traced and compiled once more with the scans unrolled (same arithmetic)."""
    if not _method(cell).startswith("mps"):
        return xla_flops(compiled)
    from heads import mps

    with mps.counted_flops():
        step, args, _ = _program(cell)
        return xla_flops(step.lower(*args).compile())


def xla_flops(compiled) -> float | None:
    """The compiled program's floating-point operations per call (XLA's cost analysis), None if not reported."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend reports it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    value = (cost or {}).get("flops")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _method(cell: Cell) -> str:
    """The exact method a cell's circuit runs: `heads.quantum.method` for "fast", else the back end."""
    from heads.quantum import method

    if cell.backend in ("-", *ANCHORS):
        return cell.backend
    if cell.noise:  # noisy: the exact density matrix, or trajectories on the MPS
        return "density" if cell.backend == "density" else f"mps x {cell.trajectories} trajectories"
    return method(cell.qubits, cell.layers) if cell.backend == "fast" else cell.backend


def _xla_bytes(compiled) -> int | None:
    """The compiled step's buffers: XLA's temporary arena + arguments + outputs − donated (aliased)."""
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _mib(n) -> float | None:
    return None if n is None else round(n / 2**20, 3)


# ---------------------------------------------------------------- a run


def run_isolated(cell: Cell, timeout: float) -> dict:
    """`run_cell` in a fresh Python process, so that its peak memory and failures are its own."""
    cmd = [sys.executable, "-m", "heads.bench", json.dumps(asdict(cell))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**asdict(cell), "status": f"timeout after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {**asdict(cell), "status": f"error (exit {proc.returncode}): {tail[-300:]}"}
    return json.loads(lines[-1])


def run(cells: list[Cell], *, isolate: bool = True, on_record=None) -> list[dict]:
    """Every cell, then the ratios within each (task, model) group."""
    records = []
    for cell in cells:
        if isolate:
            record = run_isolated(cell, timeout=max(900.0, 8 * cell.max_seconds))
        else:
            try:
                record = run_cell(cell)
            except Exception as e:  # one failing back end must not lose the others' numbers
                from cxrfeat.errors import UserError

                if isinstance(e, UserError):
                    raise
                record = {**asdict(cell), "status": f"error: {type(e).__name__}: {e}"[:400]}
        records.append(record)
        if on_record:
            on_record(record)
    add_ratios(records)
    return records


def add_ratios(records: list[dict]) -> None:
    """`ratio_to_fastest` per (qubits, model), and `speedup_vs_pennylane` where PennyLane ran too."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("status") == "ok":
            groups.setdefault((r["qubits"], r["model"]), []).append(r)
    for group in groups.values():
        fastest = min(r["median_s"] for r in group)
        reference = next((r["median_s"] for r in group if r["backend"] == "pennylane"), None)
        for r in group:
            r["ratio_to_fastest"] = r["median_s"] / fastest
            if reference is not None:
                r["speedup_vs_pennylane"] = reference / r["median_s"]


def describe_machine() -> dict:
    """Where the numbers come from: the accelerator or the CPU model and core count, versions, load."""
    import jax

    devices = jax.devices()
    cpu, cores = _cpu_model(), os.cpu_count()
    memory = _meminfo_gib()
    if devices[0].platform == "cpu":
        name = f"{cpu}, {cores} cores" + (f", {memory:.0f} GiB" if memory else "")
        slug = f"cpu-{_slug(cpu)}-{cores}c"
    else:
        kind = devices[0].device_kind
        name = f"{len(devices)}× {kind}" if len(devices) > 1 else kind
        name += f" (host: {cpu}, {cores} cores)"
        slug = f"{devices[0].platform}-{_slug(kind)}"
    details = {"platform": devices[0].platform, "devices": [d.device_kind for d in devices], "cpu": cpu,
               "cpu_cores": cores, "memory_gib": memory, "hostname": platform.node(),
               "python": platform.python_version(), "jax": jax.__version__, "load_average_start": _load()}
    try:
        import pennylane

        details["pennylane"] = pennylane.__version__
    except ImportError:
        pass
    return {"name": name, "slug": slug, "details": details}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _meminfo_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        return round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:60] or "machine"


def result(records: list[dict], machine: dict, settings: dict) -> dict:
    """The JSON document of one run (`bench/<machine>.json`)."""
    return {"format": FORMAT, "machine": machine["name"], "machine_details": {
        **machine["details"], "load_average_end": _load()}, "jax_version": machine["details"]["jax"],
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "settings": settings, "records": records}


def markdown(doc: dict) -> str:
    """The run as a Markdown table (the tables of docs/performance.md)."""
    s = doc["settings"]
    lines = [f"Measured by `heads bench` on {doc['machine']}, {doc['date'][:10]}, JAX {doc['jax_version']}: "
             f"batch {s['batch_size']}, {s['layers']} circuit layers, median of up to {s['steps']} steps "
             f"after up to {s['warmup']} warm-up steps (at most {s['max_seconds']:g} s per cell)"
             + (f"; the circuit under the noise model {s['noise']} ({s['trajectories']} trajectories per example "
                f"on the MPS, exact on the density matrix)" if s.get("noise") else "") + ".", "",
             "| Task | Model | Back end | Method | Median step | SD | Steps | Compile | Peak memory | XLA buffers | MFLOP | GFLOP/s | × 512³ matmul | × fastest | Speed-up vs PennyLane |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["records"]:
        task = f"CXR-{r['qubits']}" if r["qubits"] in (8, 14, 19) else f"{r['qubits']} qubits"
        if r.get("status") != "ok":
            lines.append(f"| {task} | {r['model']} | {r['backend']} | {_method(Cell(r['model'], r['qubits'], r['backend'], r['layers']))} | {r['status']} | | | | | | | | | | |")
            continue
        speedup = f"{r['speedup_vs_pennylane']:.1f}×" if "speedup_vs_pennylane" in r else ""
        lines.append(f"| {task} | {r['model']} | {r['backend']} | {r.get('method', '?')} | {_duration(r['median_s'])} | {_duration(r['sd_s'])} | "
                     f"{r['timed_steps']} | {r['compile_s']:.1f} s | {_size(r.get('peak_memory_mib'))} | "
                     f"{_size(r.get('xla_memory_mib'))} | {_mflop(r)} | {_rate(r)} | {_x_matmul(r)} | "
                     f"{r['ratio_to_fastest']:.2f} | {speedup} |")
    yard = [r["matmul_gflops_per_s"] for r in doc["records"] if r.get("matmul_gflops_per_s")]
    lines += ["", f"Peak memory: {_sources(doc['records'])}. XLA buffers: the compiled step's memory analysis "
              "(its temporary arena + arguments + outputs − donated buffers). MFLOP: XLA's cost analysis of the "
              "compiled step; GFLOP/s: that over the median step; × 512³ matmul: the median step over a 512×512×512 "
              "float32 matmul timed in the same process"
              + (f" (this run: {min(yard):.0f}–{max(yard):.0f} GFLOP/s)." if yard else ".")]
    return "\n".join(lines) + "\n"


def table(doc: dict):
    """The run as a rich table (what `heads bench` prints)."""
    from rich.table import Table

    t = Table(title=f"Seconds per step on {doc['machine']} (batch {doc['settings']['batch_size']}, "
                    f"{doc['settings']['layers']} layers)")
    for col in ("Task", "Model", "Back end", "Method", "Median", "SD", "Steps", "Compile", "Peak MiB", "GFLOP/s",
                "× matmul", "× fastest", "vs PennyLane"):
        t.add_column(col, justify="left" if col in ("Task", "Model", "Back end", "Method") else "right")
    for r in doc["records"]:
        head = (str(r["qubits"]), r["model"], r["backend"], r.get("method", _method(Cell(r["model"], r["qubits"], r["backend"], r["layers"]))))
        if r.get("status") != "ok":
            t.add_row(*head, f"[red]{r['status']}[/red]")
            continue
        speedup = f"{r['speedup_vs_pennylane']:.1f}×" if "speedup_vs_pennylane" in r else ""
        t.add_row(*head, _duration(r["median_s"]), _duration(r["sd_s"]), str(r["timed_steps"]),
                  f"{r['compile_s']:.1f} s", f"{r['peak_memory_mib']:,.0f}" if r.get("peak_memory_mib") is not None else "?",
                  _rate(r), _x_matmul(r), f"{r['ratio_to_fastest']:.2f}", speedup)
    return t


def _mflop(r: dict) -> str:
    return f"{r['flops'] / 1e6:,.1f}" if r.get("flops") else "?"


def _rate(r: dict) -> str:
    return f"{r['gflops_per_s']:.1f}" if r.get("gflops_per_s") else "?"


def _x_matmul(r: dict) -> str:
    return f"{r['x_matmul']:.1f}" if r.get("x_matmul") else "?"


def _sources(records) -> str:
    return "; ".join(sorted({r["peak_memory_source"] for r in records if r.get("peak_memory_source")})) or "not measured"


def _size(mib) -> str:
    if mib is None:
        return "?"
    return f"{mib:,.0f} MiB" if mib >= 10 else f"{mib:.1f} MiB"


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def write(doc: dict, out: Path, slug: str) -> Path:
    """`out/<slug>.json` and `out/<slug>.md`, each written atomically."""
    from cxrfeat.atomic import write_json, write_text

    path = Path(out) / f"{slug}.json"
    write_json(path, doc)
    write_text(path.with_suffix(".md"), markdown(doc))
    return path


def _child() -> None:
    """`python -m heads.bench '<cell json>'`: run one cell, print its record as the last line."""
    cell = Cell(**json.loads(sys.argv[1]))
    print(json.dumps(run_cell(cell, isolated=True)), flush=True)


if __name__ == "__main__":
    _child()


@dataclass(frozen=True)
class BenchOptions:
    """What `heads bench` times: qubit counts x back ends x models, and how."""

    tasks: tuple[int, ...]
    backends: tuple[str, ...]
    models: tuple[str, ...]
    batch_size: int = 32
    warmup: int = 10
    steps: int = 30
    layers: int = 3
    max_seconds: float = 60.0
    out: Path = Path("bench")
    with_backbone: bool = False
    isolate: bool = True
    noise: str | None = None
    trajectories: int = 1

    @classmethod
    def parse(cls, *, tasks: str, backends: str, models: str, **kw) -> BenchOptions:
        """From the command's comma-separated options; a bad value is a one-line UserError naming its option."""
        from heads.quantum import BACKENDS

        try:
            qubits = [int(t) for t in _csv("--tasks", tasks)]
        except ValueError:
            raise UserError(f"--tasks must be qubit counts such as 8,14,19, not {tasks!r}") from None
        opts = cls(tuple(qubits), tuple(_csv("--backends", backends, (*BACKENDS, *ANCHORS))),
                   tuple(_csv("--models", models, MODELS)), **kw)
        opts.check()
        return opts

    def check(self) -> None:
        if any(n < 2 for n in self.tasks):
            raise UserError("--tasks: the circuit needs at least 2 qubits")
        for name, value, least in (("--batch-size", self.batch_size, 1), ("--steps", self.steps, 1),
                                   ("--warmup", self.warmup, 0), ("--layers", self.layers, 1)):
            if value < least:
                raise UserError(f"{name} must be at least {least}, not {value}")
        if self.max_seconds <= 0:
            raise UserError("--max-seconds must be positive")
        if self.noise:
            from heads.noise import NoiseModel

            NoiseModel.load(self.noise)  # a bad file fails now, naming it
            if set(self.models) != {"circuit"}:
                raise UserError("--noise times the circuit's value and gradient: give --models circuit")
            bad = [b for b in self.backends if b not in ("fast", "mps", "density")]
            if bad:
                raise UserError(f"--noise: back end(s) {', '.join(bad)} have no noise; choose from fast, mps (trajectories), "
                                f"density (exact)")
            if self.trajectories < 1:
                raise UserError(f"--trajectories must be at least 1, not {self.trajectories}")


def _csv(option: str, text: str, allowed=None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise UserError(f"{option}: {', '.join(bad) or 'nothing given'} — choose from {', '.join(allowed or ())}")
    return list(dict.fromkeys(items))


def run_bench(opts: BenchOptions) -> Path:
    """`heads bench`: time every cell (progress on stderr), print the table, write <out>/<machine>.json and .md."""
    from cxrfeat.console import make_console, print_table

    if opts.with_backbone:
        _random_backbone()  # fail now, not after the other cells
    settings = dict(layers=opts.layers, batch_size=opts.batch_size, warmup=opts.warmup, steps=opts.steps,
                    max_seconds=opts.max_seconds)
    if opts.noise:
        settings |= dict(noise=opts.noise, trajectories=opts.trajectories)
    cells = plan(list(opts.tasks), list(opts.backends), list(opts.models), with_backbone=opts.with_backbone, **settings)
    machine = describe_machine()
    console = make_console(stderr=True)
    console.print(f"timing {len(cells)} cells on {machine['name']} "
                  f"({'one process each' if opts.isolate else 'in this process'})")

    def progress(r: dict) -> None:
        what = f"{r['model']:<16} {r['qubits']:>3} qubits {r['backend']:<12}"
        if r.get("status") == "ok":
            console.print(f"  {what} median {_duration(r['median_s']):>9} over {r['timed_steps']} steps, "
                          f"compile {r['compile_s']:.1f} s, peak {r['peak_memory_mib']:.0f} MiB")
        else:
            console.print(f"  {what} [red]{r['status']}[/red]")

    records = run(cells, isolate=opts.isolate, on_record=progress)
    doc = result(records, machine, {**settings, "tasks": list(opts.tasks), "backends": list(opts.backends),
                                    "models": list(opts.models), "with_backbone": opts.with_backbone,
                                    "isolate": opts.isolate})
    path = write(doc, opts.out, machine["slug"])
    print_table(make_console(), table(doc))
    return path
