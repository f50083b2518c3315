"""Plan a model's workloads on a device mesh without its weights: compile, then read memory and FLOPs.

`plan(config, mesh)` builds abstract params (`jax.ShapeDtypeStruct` carrying the family's
`NamedSharding`s), lowers and compiles under the mesh the programs jaxedit runs, and reports for each
the per-device peak bytes (`compiled.memory_analysis()`: arguments + outputs + temporaries − aliased,
for the backend it compiles on) and the matrix FLOPs per device (the whole program's, counted from its
jaxpr with every loop at its trip count by `jaxedit.scale.flops`, split evenly over the devices; XLA's
`cost_analysis()`, which counts a loop body once, is kept beside them):

- `forward`: all logits of a batch of 8 × 128 tokens;
- `trace`: one causal-trace grid of one prompt, hidden kind, every layer × 16 tokens, 10 noise samples
  (the clean / corrupted runs plus the grid program, layers scanned in 4 segments);
- `rome`: one ROME edit: the target optimisation loop at the middle layer (21 contexts + the KL row,
  20 Adam steps) and the key-statistics solve `C⁻¹ k*`;
- `mass`: a MEMIT / PMET batch of `edits` requests over 5 layers: target loops in memory-bounded chunks
  (the chunk program's peak; FLOPs × chunks) and one regularised solve per layer.

The time at the peak rate of an A100-80GB and an H100 SXM (dense tensor cores at the params' dtype) is
FLOPs / peak per device: a lower bound; real runs add memory traffic and communication.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxedit.core import decoder, layout
from jaxedit.core.config import ModelConfig
from jaxedit.core.sharding import param_shardings
from jaxedit.edit.contexts import MEMIT_PREFIXES, ROME_PREFIXES
from jaxedit.edit.targets import Batch, TargetHparams, optimise_batch, rows_for_budget
from jaxedit.errors import InputError
from jaxedit.runtime.execution import Execution
from jaxedit.scale.flops import matmul_flops
from jaxedit.scale.presets import per_device_param_bytes
from jaxedit.trace import program, schedule
from jaxedit.trace.runs import clean_and_corrupted

# dense tensor-core peaks, FLOP/s per device (NVIDIA data sheets; float32 runs as TF32)
PEAKS: dict[str, dict[str, float]] = {
    "A100-80GB": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    "H100-SXM": {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12},
}
PROGRAMS = ("forward", "trace", "rome", "mass")


@dataclasses.dataclass(frozen=True)
class ProgramPlan:
    """One compiled workload.

    Attributes:
      per_device_peak_bytes: from `memory_analysis()` of the compiled (partitioned) program.
      total_flops: matrix FLOPs of the whole program, every loop at its trip count (`jaxedit.scale.flops`).
      xla_flops: `cost_analysis()["flops"]` of one device's partition (XLA counts loop bodies once).
      devices: devices the program is partitioned over; `flops` = total / devices (an even split).
      executables: the compiled programs (not serialised), so a caller runs exactly what was planned.
    """

    per_device_peak_bytes: int
    total_flops: float
    xla_flops: float
    devices: int
    compile_seconds: float
    executables: tuple[Any, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @property
    def flops(self) -> float:
        return self.total_flops / self.devices

    def seconds_at_peak(self, dtype: str) -> dict[str, float]:
        return {gpu: self.flops / rates[dtype] for gpu, rates in PEAKS.items()}

    def to_dict(self, dtype: str) -> dict[str, Any]:
        return {
            "per_device_peak_bytes": self.per_device_peak_bytes,
            "flops": self.flops,
            "total_flops": self.total_flops,
            "xla_cost_analysis_flops": self.xla_flops,
            "compile_seconds": round(self.compile_seconds, 2),
            "seconds_at_peak": self.seconds_at_peak(dtype),
        }


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    config: ModelConfig
    mesh_shape: dict[str, int]
    params: int
    per_device_param_bytes: int
    programs: dict[str, ProgramPlan]
    edits: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "dtype": self.config.dtype,
            "devices": int(np.prod(list(self.mesh_shape.values()))),
            "mesh": self.mesh_shape,
            "params": self.params,
            "per_device_param_bytes": self.per_device_param_bytes,
            "edits": self.edits,
            "programs": {k: p.to_dict(self.config.dtype) for k, p in self.programs.items()},
            "note": (
                "flops: matrix FLOPs per device (whole program with loops at their trip counts, split "
                "evenly); seconds_at_peak = flops / dense tensor-core peak: a lower bound"
            ),
        }

    def table(self) -> str:
        gib = 2.0**30
        lines = [
            f"{self.name}: {self.params / 1e9:.2f} B params ({self.config.dtype}), mesh {self.mesh_shape}, "
            f"{self.per_device_param_bytes / gib:.2f} GiB of params per device",
            f"{'program':<9}{'peak GiB/device':>16}{'TFLOP/device':>14}{'A100 s (min)':>14}{'H100 s (min)':>14}",
        ]
        for name, p in self.programs.items():
            at = p.seconds_at_peak(self.config.dtype)
            lines.append(
                f"{name:<9}{p.per_device_peak_bytes / gib:>16.2f}{p.flops / 1e12:>14.3f}"
                f"{at['A100-80GB']:>14.4f}{at['H100-SXM']:>14.4f}"
            )
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Part:
    executable: Any
    peak: int
    total_flops: float
    xla_flops: float
    seconds: float


def _part(fn: Callable, *args: Any, static: tuple[int, ...] = (), while_trips: int = 1) -> _Part:
    """Lower and compile `fn` on abstract (and static) args; its memory, FLOPs and compile time."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    peak = int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    total = matmul_flops(fn, *args, static_argnums=static, while_trips=while_trips)
    return _Part(compiled, peak, total, float(cost.get("flops", 0.0)), seconds)


def _combine(mesh: Mesh, *weighted: tuple[_Part, int]) -> ProgramPlan:
    """One program plan from parts run `count` times each (peak: the largest part)."""
    return ProgramPlan(
        per_device_peak_bytes=max(part.peak for part, _ in weighted),
        total_flops=sum(part.total_flops * count for part, count in weighted),
        xla_flops=sum(part.xla_flops * count for part, count in weighted),
        devices=int(np.prod(list(mesh.shape.values()))),
        compile_seconds=sum(part.seconds for part, _ in weighted),
        executables=tuple(part.executable for part, _ in weighted),
    )


def abstract_sharded_params(config: ModelConfig, mesh: Mesh, uneven: str = "replicate") -> dict:
    """`ShapeDtypeStruct`s of every param with its `NamedSharding`: params that were never allocated
    (axes the mesh does not divide stay replicated, see `jaxedit.core.sharding.mesh_axes`)."""
    shardings = param_shardings(config, mesh, uneven=uneven)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        layout.abstract_params(config),
        shardings,
    )


def _replicator(mesh: Mesh) -> Callable[..., jax.ShapeDtypeStruct]:
    spec = NamedSharding(mesh, PartitionSpec())
    return lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=spec)


def _batch_sharded(mesh: Mesh, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    axis = "data" if "data" in mesh.shape and shape[0] % mesh.shape["data"] == 0 else None
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec(axis)))


def plan_forward(
    config: ModelConfig, mesh: Mesh, params: dict, batch: int = 8, length: int = 128
) -> ProgramPlan:
    """All logits of a `[batch, length]` batch (batch over `data`, params by the family's rules)."""
    fn = jax.jit(lambda p, ids, mask: decoder.forward(p, config, ids, mask).logits)
    ids = _batch_sharded(mesh, (batch, length), jnp.int32)
    mask = _batch_sharded(mesh, (batch, length), jnp.bool_)
    return _combine(mesh, (_part(fn, params, ids, mask), 1))


# the trace grid as the committed tables (experiments/results/plan_presets.md) planned it: 4 layer segments
PLAN_EXECUTION = Execution(segments=4)


def plan_trace(
    config: ModelConfig,
    mesh: Mesh,
    params: dict,
    tokens: int = 16,
    samples: int = 10,
    execution: Execution = PLAN_EXECUTION,
) -> ProgramPlan:
    """The clean / corrupted runs and the hidden-kind grid of one `tokens`-token prompt, with
    `execution`'s settings resolved for an accelerator (whole-array rows, scanned layer segments)."""
    ex = execution.resolved("gpu")
    rep = _replicator(mesh)
    ids, mask = rep((tokens,), jnp.int32), rep((tokens,), jnp.bool_)
    noise = rep((samples, tokens, config.d_model), jnp.float32)
    answer = rep((), jnp.int32)
    runs = _part(clean_and_corrupted, params, config, ids, mask, noise, answer, static=(1,))
    clean, corrupt, _, _ = jax.eval_shape(
        lambda p, i, m, n, a: clean_and_corrupted(p, config, i, m, n, a), params, ids, mask, noise, answer
    )
    grid_plan = schedule.build_plan(
        "hidden", config.n_layers, tokens, tokens, samples, 10, "code", None, ex.segments
    )
    clean = jax.tree.map(lambda s: rep(s.shape, s.dtype), clean)
    chunks = jax.tree.map(lambda s: rep((1, *s.shape), s.dtype), corrupt)
    grid = _part(
        program.grid_program, params, config, grid_plan, mask, rep((tokens,), jnp.int32), clean, chunks, answer,
        ex.row_block, static=(1, 2, 8),
    )  # fmt: skip
    return _combine(mesh, (runs, 1), (grid, 1))


# the prepass and the loop as one program: its peak memory, FLOPs and compile time in one figure
_target_program = jax.jit(optimise_batch, static_argnums=(1, 2, 3, 4, 5))


def _target_batch(mesh: Mesh, rows: int, length: int = 32, reads: int = 4) -> Batch:
    """An abstract `build_batch` batch (rows of contexts + KL rows, right-padded to `length`)."""
    shard = lambda shape, dtype: _batch_sharded(mesh, shape, dtype)  # noqa: E731
    return Batch(
        shard((rows, length), jnp.int32), shard((rows, length), jnp.bool_), shard((rows,), jnp.int32),
        shard((rows,), jnp.int32), shard((rows,), jnp.bool_), shard((rows,), jnp.bool_),
        shard((rows, reads), jnp.int32), shard((rows, reads), jnp.int32), shard((rows, reads), jnp.float32),
    )  # fmt: skip


def _solve(config: ModelConfig, mesh: Mesh, columns: int) -> _Part:
    """`(C + K Kᵀ)⁻¹ R` for a `[F, F]` second moment and `columns` right-hand sides, float32."""
    f = config.d_mlp
    fn = jax.jit(lambda c, k, r: jnp.linalg.solve(c + k @ k.T, r))
    rep = _replicator(mesh)
    return _part(fn, rep((f, f), jnp.float32), rep((f, columns), jnp.float32), rep((f, columns), jnp.float32))


def plan_rome(config: ModelConfig, mesh: Mesh, params: dict, hp: TargetHparams | None = None) -> ProgramPlan:
    """ROME at the middle layer: the target loop (`hp.steps` Adam steps, ROME's 21 contexts + the KL
    row) and the solve."""
    hp = TargetHparams() if hp is None else hp
    contexts = sum(count for _, count in ROME_PREFIXES) + 1  # the bare prompt too
    layer = config.n_layers // 2
    loop = _part(
        _target_program, params, config, layer, 1, hp, 16, _target_batch(mesh, contexts + 1),
        static=(1, 2, 3, 4, 5), while_trips=hp.steps,
    )  # fmt: skip
    return _combine(mesh, (loop, 1), (_solve(config, mesh, 1), 1))


def plan_mass(
    config: ModelConfig, mesh: Mesh, params: dict, edits: int, execution: Execution = Execution()
) -> ProgramPlan:
    """A MEMIT / PMET batch of `edits` over 5 layers ending at the middle: target loops in chunks of
    `rows_for_budget` rows (25 steps; `execution.memory_budget`), one solve per layer with a column per
    edit."""
    layers = 5
    top = config.n_layers // 2
    contexts = sum(count for _, count in MEMIT_PREFIXES) + 1
    rows = execution.max_rows or rows_for_budget(config, top, execution.memory_budget)
    per_chunk = max(1, rows // (contexts + 1))
    n = min(per_chunk, edits)
    hp = TargetHparams(reference="resid_post", steps=25)
    loop = _part(
        _target_program, params, config, top, n, hp, 16, _target_batch(mesh, n * (contexts + 1)),
        static=(1, 2, 3, 4, 5), while_trips=hp.steps,
    )  # fmt: skip
    return _combine(mesh, (loop, -(-edits // n)), (_solve(config, mesh, edits), layers))


def plan(
    config: ModelConfig,
    mesh: Mesh,
    *,
    name: str = "model",
    edits: int = 1000,
    programs: tuple[str, ...] = PROGRAMS,
    progress: Callable[[str], None] | None = print,
    execution: Execution = PLAN_EXECUTION,
) -> Plan:
    """Compile `programs` for `config` on `mesh` without weights; see the module docstring."""
    unknown = set(programs) - set(PROGRAMS)
    if unknown:
        raise InputError(f"unknown programs {sorted(unknown)}; programs are {', '.join(PROGRAMS)}")
    if edits < 1:
        raise InputError(f"edits must be at least 1, got {edits}")
    params = abstract_sharded_params(config, mesh)
    builders = {
        "forward": lambda: plan_forward(config, mesh, params),
        "trace": lambda: plan_trace(config, mesh, params, execution=execution),
        "rome": lambda: plan_rome(config, mesh, params),
        "mass": lambda: plan_mass(config, mesh, params, edits, execution),
    }
    results = {}
    with mesh:
        for program in programs:
            if progress is not None:
                progress(f"compiling {program} for {name} on mesh {dict(mesh.shape)} ...")
            results[program] = builders[program]()
            if progress is not None:
                progress(f"  {program}: compiled in {results[program].compile_seconds:.1f} s")
    return Plan(
        name=name,
        config=config,
        mesh_shape=dict(mesh.shape),
        params=layout.param_count(config),
        per_device_param_bytes=per_device_param_bytes(config, dict(mesh.shape), uneven="replicate"),
        programs=results,
        edits=edits,
    )
