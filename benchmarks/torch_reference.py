"""Train-step time of the official PyTorch backbones, timed as benchmarks.speed times ours.

Run with a Python that has PyTorch (never the project's own environment), from the repository root:

  /path/to/torch/python -m benchmarks.torch_reference --official-root=/path/to/official
  ... --models=ctrgcn,agcn --batch=16 --frames=64 --threads=2 --steps=3 --json=torch.json

  ... --predict --models=ctrgcn --batch=1     # eval-mode forward only, as prediction runs it

For each backbone, in its own process (so the peak RSS is that backbone's own): build the official
model class exactly as its NTU120 X-sub config does (120 classes, 25 joints, 2 persons, the graph
the config names), draw random NTU-shaped float32 input (N, 3, T, 25, 2) and random labels, and
time train steps: zero_grad, forward in train mode, cross-entropy on the logits, backward, the
official optimizer's step. torch.set_num_threads(--threads) (and OMP/MKL_NUM_THREADS) in that
process. Reported: parameters, the first step (includes lazy initialisation), the median of the
next --steps steps, peak RSS. --json writes {model: {params, first_step_s, step_s, peak_rss_gib,
torch_version, threads, ...}} for a benchmark that prints ours / official. With --predict the
model runs in eval mode under torch.no_grad, forward only (logits), as the official test loop
does; call_s is then the median of the calls after the first.

The official code is not vendored here: clone each repository into --official-root, one folder
per repository named owner__repo (so the official `model` / `graph` / `utils` packages import
unchanged; each backbone's process puts only its own folders on sys.path):

  Uason-Chen__CTR-GCN          https://github.com/Uason-Chen/CTR-GCN
                               model/ctrgcn.py, graph/{__init__,ntu_rgb_d,tools,ucla}.py
  lshiwjx__2s-AGCN             https://github.com/lshiwjx/2s-AGCN
                               model/{__init__,agcn}.py,
                               graph/{__init__,ntu_rgb_d,tools,kinetics}.py
  zhshj0110__CSRE              https://github.com/zhshj0110/CSRE (Hyperformer as released with CSRE)
                               model/Hyperformer.py (+ graph/ when the repository has it)
  ZhouYuxuanYX__Hyperformer    https://github.com/ZhouYuxuanYX/Hyperformer
                               graph/{ntu_rgb_d,tools}.py; model/Hyperformer.py is used only when
                               zhshj0110__CSRE is absent
  ZhouYuxuanYX__BlockGCN       https://github.com/ZhouYuxuanYX/BlockGCN
                               model/BlockGCN.py (+ graph/ntu_rgb_d.py; without it the
                               Hyperformer folder's graph is used: BlockGCN's NTU graph has the
                               same edges); needs einops and torch-topological installed
  stnoah1__infogcn             https://github.com/stnoah1/infogcn
                               model/{infogcn,modules,ms_tcn,activation}.py, utils.py,
                               graph/{ntu_rgb_d,tools}.py; needs einops and tqdm
  huguyuehuhu__HCN-pytorch     https://github.com/huguyuehuhu/HCN-pytorch
                               model/HCN.py, utils/{__init__,utils}.py; needs openpyxl

Where a model's folders list several, they go on sys.path in that order, so a file missing from
the first is taken from the next. The official files are run unchanged; what this script does
around them (all outside the timed work or not changing it): 2S-AGCN's hard-coded
`self.A.cuda(x.get_device())` gets an A whose .cuda() returns the CPU tensor; InfoGCN's float64
A_vector is cast to float32 (officially apex AMP casts it); HCN's unused `import torchvision` is
satisfied by an empty module when torchvision is not installed. Hyperformer from the CSRE release
also runs its STFD head (`std`) in the forward pass; only the logits enter the loss, and its
parameters are left out of the reported count (ours has no such head).

Optimizers as configured (the learning rate does not change the step time): SGD momentum 0.9,
Nesterov, weight decay on every parameter (CTR-GCN lr 0.1 wd 4e-4; 2S-AGCN 0.1 / 1e-4;
Hyperformer 0.025 / 4e-4; BlockGCN 0.05 / 4e-4; InfoGCN 0.1 / 5e-4); HCN Adam (lr 1e-3,
wd 1e-4) after clip_grad_norm_(0.5 * batch) as its training loop does. The loss is plain
cross-entropy for all: InfoGCN's label smoothing and latent regularisers and CSRE's contrastive
terms are not part of a backbone step.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

RESULT_MARK = "@@torch_reference@@"

# NTU120 X-sub, as the official configs build the models.
NTU = {"num_point": 25, "num_person": 2}
NTU_GRAPH = {"graph": "graph.ntu_rgb_d.Graph", "graph_args": {"labeling_mode": "spatial"}}
JOINT_LABEL = [0, 4, 2, 2, 2, 2, 1, 1, 2, 2, 1, 1, 2, 3, 3, 3, 2, 3, 3, 3, 1, 0, 1, 0, 1]


def _sgd(lr, weight_decay):
    return {
        "name": "SGD",
        "lr": lr,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": weight_decay,
    }


# folders (first has priority), module, class, constructor arguments, graph module to import
# first, call style, optimizer.
SPECS = {
    "ctrgcn": {
        "roots": ["Uason-Chen__CTR-GCN"],
        "module": "model.ctrgcn",
        "cls": "Model",
        "kwargs": {**NTU, **NTU_GRAPH},
        "call": "x",
        "optimizer": _sgd(0.1, 4e-4),
    },
    "agcn": {
        "roots": ["lshiwjx__2s-AGCN"],
        "module": "model.agcn",
        "cls": "Model",
        "kwargs": {**NTU, **NTU_GRAPH},
        "call": "x",
        "optimizer": _sgd(0.1, 1e-4),
    },
    "hyperformer": {
        "roots": ["zhshj0110__CSRE", "ZhouYuxuanYX__Hyperformer"],
        "module": "model.Hyperformer",
        "cls": "Model",
        "kwargs": {**NTU, **NTU_GRAPH, "joint_label": JOINT_LABEL},
        "call": "x_onehot",
        "optimizer": _sgd(0.025, 4e-4),
    },
    "blockgcn": {
        "roots": ["ZhouYuxuanYX__BlockGCN", "ZhouYuxuanYX__Hyperformer"],
        "module": "model.BlockGCN",
        "cls": "Model",
        "kwargs": {**NTU, **NTU_GRAPH, "joint_label": JOINT_LABEL},
        "call": "x_onehot_joint",
        "optimizer": _sgd(0.05, 4e-4),
    },
    "hcn": {
        "roots": ["huguyuehuhu__HCN-pytorch"],
        "module": "model.HCN",
        "cls": "HCN",
        "kwargs": {"in_channel": 3, "num_joint": 25, "num_person": 2, "out_channel": 64},
        "call": "x_target",
        "optimizer": {"name": "Adam", "lr": 1e-3, "weight_decay": 1e-4, "clip": 0.5},
    },
    "infogcn": {
        "roots": ["stnoah1__infogcn"],
        "module": "model.infogcn",
        "cls": "InfoGCN",
        "kwargs": {
            **NTU,
            "graph": "graph.ntu_rgb_d.Graph",
            "in_channels": 3,
            "drop_out": 0,
            "num_head": 3,
            "k": 1,
            "noise_ratio": 0.5,
            "gain": 3,
        },
        "call": "x",
        "optimizer": _sgd(0.1, 5e-4),
    },
}
MODEL_NAMES = tuple(SPECS)
# The official CSRE loss (the release's model/loss.py): both banks' write, similarities,
# per-anchor selections and InfoNCE, forward and backward, at the recipe's sizes. Timed like a
# backbone, in its own process, under this name.
CSRE_LOSS = "csre_loss"
CSRE_LOSS_ROOTS = ["zhshj0110__CSRE"]
CSRE_LOSS_SIZES = {"dim": 256, "positives": 128, "negatives": 512}
# Heads that the released file carries but the backbone step does not train (CSRE's STFD head).
UNTRAINED_PREFIXES = ("std.",)


class _CpuAdjacency:
    """Stands in for 2S-AGCN's plain-tensor `A`: its forward calls A.cuda(x.get_device())."""

    def __init__(self, tensor):
        self.tensor = tensor

    def cuda(self, *args, **kwargs):
        return self.tensor


def _put_on_path(args, name: str) -> list[str]:
    roots = [os.path.join(args.official_root, root) for root in SPECS[name]["roots"]]
    found = [root for root in roots if os.path.isdir(root)]
    if not found:
        raise SystemExit(f"{name}: none of {roots} exists (see this module's docstring)")
    sys.path[:0] = found
    return found


def build(args, name: str):
    """The official model, built as its NTU120 config does; returns (model, source file)."""
    import importlib

    spec = SPECS[name]
    _put_on_path(args, name)
    if name == "hcn":
        try:
            import torchvision  # noqa: F401
        except ImportError:
            sys.modules["torchvision"] = types.ModuleType("torchvision")
    # import_class('graph.ntu_rgb_d.Graph') reaches the module by attribute: import it first
    # (some repositories' graph/ has no __init__.py importing its modules).
    if "graph" in spec["kwargs"]:
        importlib.import_module(spec["kwargs"]["graph"].rsplit(".", 1)[0])
    module = importlib.import_module(spec["module"])
    kwargs = dict(spec["kwargs"], num_class=args.classes)
    if name == "hcn":
        kwargs["window_size"] = args.frames
    model = getattr(module, spec["cls"])(**kwargs)
    if name == "agcn":
        for unit in model.modules():
            if type(unit).__name__ == "unit_gcn":
                unit.A = _CpuAdjacency(unit.A)
    if name == "infogcn":
        model.A_vector = model.A_vector.float()
    return model, os.path.abspath(module.__file__)


def make_optimizer(model, spec):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if spec["name"] == "Adam":
        return torch.optim.Adam(
            params, lr=spec["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=spec["weight_decay"]
        )
    return torch.optim.SGD(
        params,
        lr=spec["lr"],
        momentum=spec["momentum"],
        nesterov=spec["nesterov"],
        weight_decay=spec["weight_decay"],
    )


def measure_csre_loss(args) -> dict:
    """The official loss on both banks (spatial and temporal), full and valid for every anchor
    (args.loss_slots slots, by default one per NTU120 X-sub training sample; args.classes
    classes), at args.loss_batch: the first call and the median of `steps` further calls of
    forward + backward to the features."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    roots = [os.path.join(args.official_root, root) for root in CSRE_LOSS_ROOTS]
    if not os.path.isdir(roots[0]):
        raise SystemExit(f"{CSRE_LOSS}: {roots[0]} does not exist (see this module's docstring)")
    sys.path[:0] = roots
    from model.loss import ContrastLoss

    size = {**CSRE_LOSS_SIZES, "batch": args.loss_batch, "slots": args.loss_slots}
    labels = (torch.arange(size["slots"]) % args.classes).tolist()
    banks = []
    for _ in range(2):
        bank = ContrastLoss(
            out_channels=size["dim"],
            mem_size=size["slots"],
            positive_num=size["positives"],
            negative_num=size["negatives"],
            T=0.8,
            class_num=args.classes,
            label_all=labels,
        )
        rows = torch.randn(size["slots"], size["dim"])
        bank.Bank.data = rows / rows.norm(dim=1, keepdim=True)
        bank.bank_flag.data.fill_(1)
        banks.append(bank)
    generator = torch.Generator().manual_seed(1)
    times = []
    for _ in range(args.steps + 1):
        features = [
            torch.randn(size["batch"], size["dim"], generator=generator, requires_grad=True)
            for _ in banks
        ]
        label = torch.randint(0, args.classes, (size["batch"],), generator=generator)
        index = torch.randperm(size["slots"], generator=generator)[: size["batch"]]
        start = time.perf_counter()
        loss = sum(bank(f, label, index) for bank, f in zip(banks, features, strict=True)) / 2
        if not loss.requires_grad:  # the official loss returns a constant 0 then
            raise SystemExit(
                f"{CSRE_LOSS}: no anchor has {size['positives']} positives among "
                f"{size['slots']:,} slots of {args.classes} classes; give --loss-slots of at "
                f"least {size['positives'] * args.classes:,}"
            )
        loss.backward()
        times.append(time.perf_counter() - start)
    return {
        "call_s": statistics.median(times[1:]) if times[1:] else times[0],
        "first_call_s": times[0],
        "call_times_s": times[1:],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "classes": args.classes,
        **size,
    }


def measure(args, name: str) -> dict:
    """One backbone in this process: build, then time the first and `steps` further steps."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, source = build(args, name)
    model.train()
    spec = SPECS[name]
    optimizer = make_optimizer(model, spec["optimizer"])
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    params = sum(p.numel() for k, p in named if not k.startswith(UNTRAINED_PREFIXES))
    params_all = sum(p.numel() for _, p in named)
    clip = spec["optimizer"].get("clip")
    generator = torch.Generator().manual_seed(1)

    def batch():
        x = torch.randn(args.batch, 3, args.frames, 25, 2, generator=generator)
        label = torch.randint(0, args.classes, (args.batch,), generator=generator)
        return x, label

    def step(x, label):
        optimizer.zero_grad()
        logits = forward(model, spec, x, label, args.classes)
        loss = F.cross_entropy(logits, label)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip * args.batch)
        optimizer.step()
        return float(loss.detach())

    times = []
    for _ in range(args.steps + 1):
        x, label = batch()
        start = time.perf_counter()
        loss = step(x, label)
        times.append(time.perf_counter() - start)
    if loss != loss:  # random inputs at the recipe's rate can diverge; the work is the same
        print(f"  {name}: the loss became NaN (timings kept)", file=sys.stderr)
    return {
        "finite_loss": loss == loss,
        "params": params,
        "params_all": params_all,
        "first_step_s": times[0],
        "step_s": statistics.median(times[1:]) if times[1:] else times[0],
        "step_times_s": times[1:],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "frames": args.frames,
        "classes": args.classes,
        "optimizer": spec["optimizer"]["name"],
        "source": source,
    }


def forward(model, spec: dict, x, label, classes: int):
    """The official forward with the inputs its training loop passes; the logits."""
    import torch.nn.functional as F

    call = spec["call"]
    if call == "x":
        out = model(x)
    elif call == "x_target":
        out = model(x, target=label)
    elif call == "x_onehot":
        out = model(x, F.one_hot(label, num_classes=classes))
    else:  # BlockGCN: (data, one-hot label, absolute joints); the joint stream's clip itself
        out = model(x, F.one_hot(label, num_classes=classes), x)
    return out[0] if isinstance(out, tuple) else out


def measure_predict(args, name: str) -> dict:
    """One backbone in eval mode under no_grad: the first and `steps` further forward calls."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, source = build(args, name)
    model.eval()
    generator = torch.Generator().manual_seed(1)
    times = []
    with torch.no_grad():
        for _ in range(args.steps + 1):
            x = torch.randn(args.batch, 3, args.frames, 25, 2, generator=generator)
            label = torch.randint(0, args.classes, (args.batch,), generator=generator)
            start = time.perf_counter()
            forward(model, SPECS[name], x, label, args.classes).numpy()
            times.append(time.perf_counter() - start)
    return {
        "first_call_s": times[0],
        "call_s": statistics.median(times[1:]) if times[1:] else times[0],
        "call_times_s": times[1:],
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "frames": args.frames,
        "source": source,
    }


def run_child(args, name: str) -> dict:
    """Runs `measure` for one backbone in a fresh interpreter; returns its result or an error."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.torch_reference",
        f"--official-root={args.official_root}",
        f"--models={name}",
        f"--batch={args.batch}",
        f"--frames={args.frames}",
        f"--classes={args.classes}",
        f"--threads={args.threads}",
        f"--steps={args.steps}",
        f"--loss-batch={args.loss_batch}",
        f"--loss-slots={args.loss_slots}",
        *(["--predict"] if args.predict else []),
        "--child",
    ]
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["?"])[-1]
    sys.stderr.write(done.stdout + done.stderr)
    return {"error": f"exit {done.returncode}: {tail}"}


def table(results: dict) -> str:
    lines = [
        "| backbone | parameters | first step | step (median) | peak RSS | threads | torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        if name == CSRE_LOSS:
            lines.append(
                f"| CSRE loss, both banks, batch {r['batch']}, {r['slots']:,} slots | - | "
                f"{r['first_call_s']:.2f} s | {r['call_s']:.2f} s | {r['peak_rss_gib']:.2f} GiB "
                f"| {r['threads']} | {r['torch_version']} |"
            )
            continue
        params = f"{r['params']:,}"
        if r["params_all"] != r["params"]:
            params += f" ({r['params_all']:,} with the std head)"
        lines.append(
            f"| {name} | {params} | {r['first_step_s']:.2f} s | {r['step_s']:.2f} s | "
            f"{r['peak_rss_gib']:.2f} GiB | {r['threads']} | {r['torch_version']} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-root", required=True, help="folder of owner__repo clones")
    parser.add_argument(
        "--models",
        help=f"backbones, and {CSRE_LOSS} for the official CSRE loss (default: all; all "
        "backbones with --predict)",
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--classes", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--loss-batch", type=int, default=64, help=f"{CSRE_LOSS}'s batch")
    parser.add_argument(
        "--loss-slots", type=int, default=63026, help=f"{CSRE_LOSS}'s bank slots (NTU120 X-sub)"
    )
    parser.add_argument(
        "--predict", action="store_true", help="time the eval-mode forward, not train steps"
    )
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    default = MODEL_NAMES if args.predict else (*MODEL_NAMES, CSRE_LOSS)
    names = [n for n in (args.models or ",".join(default)).split(",") if n]
    unknown = sorted(set(names) - {*SPECS, CSRE_LOSS})
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {[*SPECS, CSRE_LOSS]}")
    if args.predict and CSRE_LOSS in names:
        parser.error(f"--predict times backbones, not {CSRE_LOSS}")
    if args.child:
        if names[0] == CSRE_LOSS:
            result = measure_csre_loss(args)
        else:
            result = (measure_predict if args.predict else measure)(args, names[0])
        print(RESULT_MARK + json.dumps(result), flush=True)
        return
    print(
        f"official PyTorch backbones{', eval-mode forward' if args.predict else ''}: batch "
        f"{args.batch}, {args.frames} frames, {args.classes} classes, {args.threads} threads, "
        f"median of {args.steps} {'calls' if args.predict else 'steps'}",
        flush=True,
    )
    results = {}
    for name in names:
        results[name] = run_child(args, name)
        r = results[name]
        unit = "call" if args.predict else "step"
        status = r.get("error") or f"{r.get('step_s', r.get('call_s')):.3f} s per {unit}"
        print(f"  {name}: {status}", flush=True)
    if not args.predict:
        print(table(results))
    if args.json:
        good = {name: r for name, r in results.items() if "error" not in r}
        with open(args.json, "w") as f:
            json.dump(good, f, indent=1)
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
