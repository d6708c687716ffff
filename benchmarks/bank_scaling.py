"""Cost and memory of the CSRE banks as they grow: more slots, and more devices to split them.

  python -m benchmarks.bank_scaling
  python -m benchmarks.bank_scaling --sizes 1000,10000 --devices 1,2 --mesh-slots 20000

One call = what the train step spends on CSRE: both banks' write, (batch x slots)
similarities, hard and random selections, InfoNCE, and the gradient to the batch features
(official sampling: 128 hard positives, 512 hard + 512 random negatives). The banks start
full, so every anchor whose class has 128 slots counts.

(a) Slots: a per-sample bank (csre.bank_size=0) and a queue (csre.bank_size=K) of each
    size, on one device.
(b) Devices: each count runs in its own process with
    XLA_FLAGS=--xla_force_host_platform_device_count=N, banks row-sharded over the 'data'
    axis as in training; bytes of bank rows per device come from the addressable shards, the
    rest from the compiled call's memory analysis. Emulated devices share the host's cores,
    so their timings only show that the sharded call runs, and the loss that it agrees.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from csre_jax import sharding
from csre_jax.csre.bank import MemoryBank, create_bank, create_queue
from csre_jax.csre.loss import ContrastConfig, bank_loss

BANKS = ("spatial", "temporal")


def full_banks(kind: str, slots: int, args, mesh) -> dict[str, MemoryBank]:
    """Both banks with every real slot written (random unit rows, classes in turn)."""
    labels = np.arange(slots) % args.classes
    if kind == "queue":
        empty = create_queue(slots, args.dim, batch_size=args.batch, pad_to_multiple=mesh.size)
    else:
        empty = create_bank(labels, args.dim, pad_to_multiple=mesh.size)
    rows = jax.tree.map(lambda _: NamedSharding(mesh, P(sharding.DATA_AXIS)), empty)
    real = jnp.arange(empty.features.shape[0]) < slots

    @jax.jit(out_shardings=rows)
    def fill(bank, key):
        features = jax.random.normal(key, bank.features.shape)
        features /= jnp.linalg.norm(features, axis=1, keepdims=True)
        class_of_row = jnp.arange(bank.labels.shape[0]) % args.classes
        return bank.replace(
            features=jnp.where(real[:, None], features, 0.0),
            labels=jnp.where(real, class_of_row, -1),
            filled=real,
        )

    empty = jax.device_put(empty, rows)
    return {name: fill(empty, jax.random.key(i)) for i, name in enumerate(BANKS)}


def contrast_call(banks, features, labels, indices, rng):
    """Mean of both banks' losses, its gradient to the (banks, batch, dim) features, new banks."""

    def loss_fn(features):
        losses, new_banks = [], {}
        for i, name in enumerate(BANKS):
            key = jax.random.fold_in(rng, i)
            loss, new_banks[name], _ = bank_loss(
                features[i], labels, indices, banks[name], key, ContrastConfig()
            )
            losses.append(loss)
        return jnp.mean(jnp.stack(losses)), new_banks

    (loss, new_banks), grad = jax.value_and_grad(loss_fn, has_aux=True)(features)
    return loss, grad, new_banks


def measure(kind: str, slots: int, args, mesh) -> dict:
    """Compile seconds, median ms per call, bank bytes (total and per device), XLA memory."""
    banks = full_banks(kind, slots, args, mesh)
    rows = jax.tree.map(lambda _: NamedSharding(mesh, P(sharding.DATA_AXIS)), banks)
    batch = NamedSharding(mesh, P(sharding.DATA_AXIS))
    call = jax.jit(
        contrast_call,
        in_shardings=(rows, NamedSharding(mesh, P(None, sharding.DATA_AXIS)), batch, batch, None),
        out_shardings=(sharding.replicated(mesh), None, rows),
        donate_argnums=0,
    )
    rng = np.random.default_rng(0)

    def inputs(step):
        features = rng.normal(size=(len(BANKS), args.batch, args.dim)).astype(np.float32)
        labels = rng.integers(0, args.classes, args.batch).astype(np.int32)
        indices = rng.choice(slots, args.batch, replace=False).astype(np.int32)
        return features, labels, indices, jax.random.key(step)

    start = time.perf_counter()
    compiled = call.lower(banks, *inputs(0)).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    leaves = jax.tree.leaves(banks)
    bank_bytes = sum(leaf.nbytes for leaf in leaves)
    first_device = mesh.devices.flat[0]
    per_device = sum(
        shard.data.nbytes
        for leaf in leaves
        for shard in leaf.addressable_shards
        if shard.device == first_device
    )
    rows_per_device = banks[BANKS[0]].features.addressable_shards[0].data.shape[0]
    times, losses = [], []
    for step in range(args.reps + 1):  # the first call warms up
        batch_inputs = inputs(step)
        start = time.perf_counter()
        loss, grad, banks = compiled(banks, *batch_inputs)
        jax.block_until_ready((loss, grad, banks))
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
        assert np.isfinite(np.asarray(grad)).all()
    return {
        "kind": kind,
        "slots": slots,
        "devices": mesh.size,
        "compile_s": compile_s,
        "ms": 1000 * float(np.median(times[1:])),
        "loss": losses[-1],
        "bank_bytes": bank_bytes,
        "rows_per_device": rows_per_device,
        "bank_bytes_per_device": per_device,
        "argument_bytes": memory.argument_size_in_bytes if memory else None,
        "output_bytes": memory.output_size_in_bytes if memory else None,
        "alias_bytes": memory.alias_size_in_bytes if memory else None,
        "temp_bytes": memory.temp_size_in_bytes if memory else None,
    }


def mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def slots_table(args) -> None:
    mesh = sharding.make_mesh(1)
    print(
        f"(a) One device, batch {args.batch}, dim {args.dim}, {args.classes} classes, both banks;"
        f" median of {args.reps} calls after a warm-up call.\n"
    )
    print(
        "| slots | bank | ms per call | compile | bank memory (both banks) "
        "| XLA temp memory | anchors with 128 positives |"
    )
    print("|---|---|---|---|---|---|---|")
    for slots in args.sizes:
        for kind in ("per-sample", "queue"):
            r = measure(kind, slots, args, mesh)
            valid = "all" if slots // args.classes >= 128 else "none (loss 0, same work)"
            print(
                f"| {slots:,} | {kind} | {r['ms']:,.1f} | {r['compile_s']:.1f} s "
                f"| {mib(r['bank_bytes'])} | {mib(r['temp_bytes'])} | {valid} |",
                flush=True,
            )


def devices_table(args) -> None:
    print(
        f"\n(b) A queue of {args.mesh_slots:,} slots per bank and a per-sample bank of "
        f"{args.mesh_slots:,} slots, row-sharded over N emulated CPU devices (one process per "
        "N); bytes are per device, from the addressable shards and the compiled call's "
        "memory_analysis(). Timings: correctness only (N devices share the host's cores).\n"
    )
    print(
        "| devices | bank | rows per device | bank rows per device (both banks) "
        "| XLA arguments / outputs (aliased) / temp per device | ms per call | loss |"
    )
    print("|---|---|---|---|---|---|---|")
    flags = [f"--{k}={getattr(args, k)}" for k in ("batch", "dim", "classes", "reps")]
    for count in args.devices:
        env = os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bank_scaling",
                "--child",
                f"--mesh-slots={args.mesh_slots}",
                *flags,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.strip().splitlines():
            r = json.loads(line)
            print(
                f"| {r['devices']} | {r['kind']} | {r['rows_per_device']:,} "
                f"| {mib(r['bank_bytes_per_device'])} | {mib(r['argument_bytes'])} / "
                f"{mib(r['output_bytes'])} ({mib(r['alias_bytes'])}) / {mib(r['temp_bytes'])} "
                f"| {r['ms']:,.0f} | {r['loss']:.6f} |",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--mesh-slots", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=120)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.devices = [int(d) for d in args.devices.split(",")]
    if args.child:
        mesh = sharding.make_mesh()
        for kind in ("per-sample", "queue"):
            print(json.dumps(measure(kind, args.mesh_slots, args, mesh)), flush=True)
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores\n")
    slots_table(args)
    devices_table(args)


if __name__ == "__main__":
    main()
