"""Replays a recorded official CSRE training run step by step through our own train step.

  python -m csre_jax.replay path/to/train_steps_f64.npz [--strict]

The recording holds the official state before and after every step (weights, BatchNorm
statistics, SGD momentum buffers, both memory banks), each step's batch, learning rate,
losses and the random negatives the official loss drew. Each step k is teacher-forced: our
TrainState is built from official state k, the train step that train.py compiles runs on
batch k with the recorded negatives, and the result is compared with official state k+1.

Tolerances per tensor (|ours - official| at most): losses 1e-5 relative; parameters and
BatchNorm statistics 1e-4 x the tensor's largest official magnitude + 1e-6; momentum
buffers 1e-4 x largest + 1e-5; banks 1e-5; filled flags exact.

A recording made entirely in float64 (`float64` = 1: inputs, weights, BatchNorm statistics,
momentum and banks in float64) is replayed in float64 with 64-bit JAX: the same train step,
every tensor of the state in float64, the plain tolerances alone. That is the proof of
equality: in float64 a step is far from every rounding-sized branch, so the official code
itself reproduces its recording exactly and a 1e-12 perturbation moves no tensor by more
than 1e-6 of its tolerance.

A float32 recording documents how close float32 gets. A step can be ill-conditioned in
float32: when a ReLU input or a max-pool pair sits within rounding distance of a tie, any two
float32 implementations (the official code on two machines included) may take different
branches there, and the early layers' gradients then differ by percents. So the step is also
run on copies of its state and batch perturbed by a relative 2^-20 (the size of the measured
difference between our float32 activations and the official ones), and a parameter or
momentum tensor passes when its error is within the tolerance plus twice the spread those
runs show. A gradient that is zero in exact arithmetic (the bias of a convolution that feeds
a BatchNorm) is rounding noise in both implementations: where ours is, the official one's
recorded noise is added to its tolerance. `--strict` applies the plain tolerances alone.
"""

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import traverse_util
from ml_collections import ConfigDict

from csre_jax import sharding
from csre_jax.csre.model import torch_key_fn
from csre_jax.data.datasets import Dataset
from csre_jax.data.pipeline import Split
from csre_jax.errors import UserError
from csre_jax.layouts import BUILTIN_LAYOUTS
from csre_jax.models import hyperformer, torch_io
from csre_jax.run_variables import backbone_variables
from csre_jax.training import loop
from csre_jax.training.state import TrainState, state_sharding

BANKS = ("spatial", "temporal")
SCALARS = (
    "num_steps",
    "steps_per_epoch",
    "num_heads",
    "num_classes",
    "batch_size",
    "epochs",
    "warmup_epochs",
    "milestone",
    "base_lr",
    "weight_decay",
    "num_positives",
    "num_negatives",
    "temperature",
)
PER_STEP = ("index", "label", "lr", "ce", "loss_spatial", "loss_temporal", "loss")
# kind -> (share of the tensor's largest official magnitude, absolute); losses are relative.
TOLERANCES = {
    "loss": (1e-5, 0.0),
    "lr": (1e-6, 0.0),  # the float32 learning rate against the recorded float64 one
    "params": (1e-4, 1e-6),
    "batch_stats": (1e-4, 1e-6),
    "eval_logits": (1e-4, 1e-6),
    "momentum": (1e-4, 1e-5),
    "banks": (0.0, 1e-5),
    "filled": (0.0, 0.0),
}
PERTURBATION = 2.0**-20
NOISE_GRADIENT = 1e-6  # a gradient this small against the largest one is zero up to rounding


# The arrays a recording holds in its own precision (float32, or float64 for `float64` = 1);
# the scalars, learning rates and losses are float64 in both.
_STATE_PARTS = ("model", "momentum", "bank_spatial", "bank_temporal", "filled")
_TENSORS = ("x_train", "x_test", "eval_logits", "logits")


class RecordingError(UserError):
    """A recording that cannot be replayed; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Recording:
    path: Path
    arrays: dict[str, np.ndarray]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def scalar(self, key: str) -> float:
        return self.arrays[key].item()

    @property
    def num_steps(self) -> int:
        return int(self.scalar("num_steps"))

    @property
    def float64(self) -> bool:
        """Whether the official run was recorded entirely in float64."""
        return bool(self.arrays.get("float64", 0))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self.float64 else np.float32)

    def state_dict(self, k: int, part: str) -> dict[str, np.ndarray]:
        """Official state k's `model` (weights and buffers) or `momentum` entries by key."""
        prefix = f"state{k}/{part}/"
        return {key[len(prefix) :]: v for key, v in self.arrays.items() if key.startswith(prefix)}


def load_recording(path: str | Path) -> Recording:
    """The recording at `path`, with every key a replay needs present."""
    path = Path(path)
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        raise RecordingError(f"{path}: not a readable .npz recording ({error})") from error
    required = ["x_train", "bank_labels", "x_test", "eval_logits", *SCALARS, *PER_STEP]
    required += [f"random_slots_{bank}" for bank in BANKS]
    if "num_steps" in arrays:
        for k in range(int(arrays["num_steps"]) + 1):
            required += [f"state{k}/filled", *(f"state{k}/bank_{bank}" for bank in BANKS)]
    missing = [key for key in required if key not in arrays]
    if missing:
        more = f" ... ({len(missing)} in all)" if len(missing) > 8 else ""
        raise RecordingError(
            f"{path}: missing key(s) {', '.join(missing[:8])}{more}; a recording of the "
            "official run holds x_train, bank_labels, the per-step arrays, the scalars and "
            "state<k>/{model,momentum,bank_*,filled} for k = 0 .. num_steps"
        )
    recording = Recording(path, arrays)
    _check_dtypes(recording)
    return recording


def _check_dtypes(recording: Recording) -> None:
    """Every input, state and logit tensor in the recording's own precision: one mixed in
    from another run would be compared at the wrong tolerance, or silently rounded."""
    expected = recording.dtype
    mixed = [
        f"{key} ({value.dtype})"
        for key, value in recording.arrays.items()
        if (key in _TENSORS or key.startswith("state") and key.split("/")[1] in _STATE_PARTS)
        and np.issubdtype(value.dtype, np.floating)
        and value.dtype != expected
    ]
    if mixed:
        more = f" ... ({len(mixed)} in all)" if len(mixed) > 4 else ""
        kind = "float64 (float64=1)" if recording.float64 else "float32 (no float64=1)"
        raise RecordingError(
            f"{recording.path}: mixed precision: the recording is {kind} but "
            f"{', '.join(mixed[:4])}{more} is not; record every input, weight, buffer, "
            f"momentum and bank tensor as {expected}"
        )


def replay_config(recording: Recording) -> ConfigDict:
    """The recorded official recipe as our config: the CSRE release's Hyperformer with both
    STFD banks, SGD (momentum 0.9, Nesterov, weight decay on every parameter) and the
    warm-up/step schedule set once per epoch, on one device."""
    num_heads = int(recording.scalar("num_heads"))
    width = recording["state0/model/l1.vit1.attn.rpe"].shape[1]
    return ConfigDict(
        {
            "seed": 0,
            "num_devices": 1,
            "num_epochs": int(recording.scalar("epochs")),
            "compute_dtype": recording.dtype.name,
            "data": {"batch_size": int(recording.scalar("batch_size")), "eval_batch_size": 8},
            "model": {
                "name": "hyperformer",
                "kwargs": {"num_heads": num_heads, "head_dim": width // num_heads},
            },
            "csre": {
                "banks": "+".join(BANKS),
                "weight": 1.0,
                "dim": recording[f"state0/bank_{BANKS[0]}"].shape[1],
                "bank_size": 0,
                "reduction": 8,
                "num_positives": int(recording.scalar("num_positives")),
                "num_negatives": int(recording.scalar("num_negatives")),
                "temperature": recording.scalar("temperature"),
                "positive_sampling": "hard",
                "negative_sampling": "hard+random",
            },
            "loss": {"label_smoothing": 0.0},
            "optim": {
                "name": "sgd",
                "base_lr": recording.scalar("base_lr"),
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": recording.scalar("weight_decay"),
                "lr_decay": "step",
                "warmup_epochs": int(recording.scalar("warmup_epochs")),
                "milestones": (int(recording.scalar("milestone")),),
                "decay": 0.1,
                "clip_norm": 0.0,
            },
        }
    )


def _dataset(recording: Recording) -> Dataset:
    """The recorded training samples (bank slot i is sample i); the test labels are not
    recorded and play no part."""
    num_classes = int(recording.scalar("num_classes"))
    x_test = recording["x_test"]
    return Dataset(
        train=Split(recording["x_train"], recording["bank_labels"].astype(np.int32), num_classes),
        test=Split(x_test, np.zeros(len(x_test), np.int32), num_classes),
        layout=BUILTIN_LAYOUTS["ntu"],
    )


_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")


class _Replayer:
    """Official states as our TrainStates, and our compiled step on the recorded batches."""

    def __init__(self, recording: Recording):
        self.recording = recording
        self.exp = loop.build(replay_config(recording), dataset=_dataset(recording))
        if self.exp.steps_per_epoch != int(recording.scalar("steps_per_epoch")):
            raise RecordingError(
                f"{recording.path}: steps_per_epoch is {recording.scalar('steps_per_epoch')} "
                f"but {len(recording['x_train'])} samples in batches of "
                f"{recording.scalar('batch_size')} make {self.exp.steps_per_epoch}"
            )
        template = loop.init_state(self.exp)
        self.train_step, self.eval_step = loop.compile_steps(self.exp, template)
        # Host copies: each state is built from numpy and placed anew (the step donates it).
        self.template = jax.device_get(template.replace(rng=None))
        self.rng = np.asarray(jax.random.key_data(template.rng))
        self.key_fn = torch_key_fn(hyperformer.torch_key)

    def _variables(self, state_dict: dict, template: dict, what: str) -> dict:
        source = f"{self.recording.path} {what}"
        variables = torch_io.variables_from_state_dict(
            state_dict, template, self.key_fn, source=source
        )
        return jax.device_get(variables)

    @functools.cache  # noqa: B019 (one replayer per replay, kept for its whole life)
    def official(self, k: int) -> tuple[dict, dict, dict, dict]:
        """Official state k as our (params, batch_stats, momentum, banks) in numpy; a
        parameter without a momentum buffer (it never had a gradient) has a zero one."""
        model = self.recording.state_dict(k, "model")
        template = {"params": self.template.params, "batch_stats": self.template.batch_stats}
        variables = self._variables(model, template, f"state{k}/model")
        buffers = self.recording.state_dict(k, "momentum")
        parameters = {key: v for key, v in model.items() if not key.endswith(_BUFFERS)}
        momentum = {key: buffers.get(key, np.zeros_like(v)) for key, v in parameters.items()}
        trace = self._variables(momentum, {"params": template["params"]}, f"state{k}/momentum")
        banks = {
            name: self.template.banks[name].replace(
                features=self.recording[f"state{k}/bank_{name}"],
                filled=self.recording[f"state{k}/filled"] > 0,
            )
            for name in BANKS
        }
        return variables["params"], variables["batch_stats"], trace["params"], banks

    @functools.cache  # noqa: B019
    def recorded_momentum(self, k: int) -> frozenset[str]:
        """Our names of the parameters that have an official momentum buffer in state k."""
        buffers = self.recording.state_dict(k, "momentum")
        return frozenset(
            "/".join(path)
            for path, leaf in traverse_util.flatten_dict(self.template.params).items()
            if self.key_fn("params", path, np.ndim(leaf))[0] in buffers
        )

    def state(self, k: int, params: dict | None = None) -> TrainState:
        """Official state k on the mesh, optionally with other parameters."""
        official_params, batch_stats, momentum, banks = self.official(k)
        params = official_params if params is None else params
        opt_state = jax.tree.map(
            lambda leaf: np.zeros(leaf.shape, leaf.dtype), jax.eval_shape(self.exp.tx.init, params)
        )
        opt_state = optax.tree_utils.tree_set(opt_state, trace=momentum, count=np.int32(k))
        state = self.template.replace(
            step=np.int32(k),
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            banks=banks,
            rng=jax.random.wrap_key_data(self.rng),
        )
        return sharding.put(state, state_sharding(state, self.exp.mesh))

    def batch(self, k: int) -> dict[str, np.ndarray]:
        """Batch k with the official random negatives: the loss uses a batch's
        random_negatives_<bank> instead of drawing its own."""
        index = self.recording["index"][k]
        batch = {
            "x": self.recording["x_train"][index],
            "label": self.recording["label"][k].astype(np.int32),
            "index": index.astype(np.int32),
        }
        for name in BANKS:
            batch[f"random_negatives_{name}"] = self.recording[f"random_slots_{name}"][k]
        return {key: np.asarray(v) for key, v in batch.items()}

    def step(self, k: int, perturbation: int | None = None) -> tuple[TrainState, dict]:
        """(new state, metrics) of our step from official state k, on the host; with a
        `perturbation` seed, parameters and inputs are first scaled by
        1 + PERTURBATION * U(-1, 1)."""
        state, batch = self.state(k), self.batch(k)
        if perturbation is not None:
            rng = np.random.default_rng(perturbation)

            def scale(x):
                noise = rng.uniform(-1.0, 1.0, np.shape(x)) * PERTURBATION
                return (np.asarray(x, np.float64) * (1.0 + noise)).astype(np.asarray(x).dtype)

            params = jax.tree.map(scale, jax.device_get(state.params))
            state = self.state(k, params)
            batch = batch | {"x": scale(batch["x"])}
        new_state, metrics = self.train_step(state, sharding.global_batch(batch, self.exp.mesh))
        return jax.device_get(new_state), jax.device_get(metrics)


@dataclasses.dataclass(frozen=True)
class Check:
    """The worst tensor of one kind at one step, as error / tolerance (above 1 fails): plain,
    and widened by the step's float32 spread and, for momentum, by the official rounding
    noise of gradients that are zero in exact arithmetic."""

    step: int
    kind: str
    ratio: float
    where: str
    widened: float
    widened_where: str


def _flat(tree) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(tree)
    return {"/".join(path): np.asarray(v, np.float64) for path, v in flat.items()}


def _ratio(error: float, tolerance: float) -> float:
    return error / tolerance if tolerance else (np.inf if error else 0.0)


def _check(step, kind, ours, official, widening=None) -> Check:
    """Compares the tensors of `official` ({name: array}) with ours; `widening` adds to a
    tensor's tolerance."""
    share, absolute = TOLERANCES[kind]
    plain, widened = [(0.0, "")], [(0.0, "")]
    for name, reference in official.items():
        error = float(np.abs(np.asarray(ours[name], np.float64) - reference).max(initial=0.0))
        tolerance = share * float(np.abs(reference).max(initial=0.0)) + absolute
        plain.append((_ratio(error, tolerance), name))
        widened.append((_ratio(error, tolerance + (widening or {}).get(name, 0.0)), name))
    return Check(step, kind, *max(plain), *max(widened))


def _spread(runs: list[dict], base: dict) -> dict[str, float]:
    """Per tensor, twice the largest deviation of the perturbed runs from the plain one."""
    return {
        name: 2 * max((float(np.abs(run[name] - value).max()) for run in runs), default=0.0)
        for name, value in base.items()
    }


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    recording: Path
    checks: list[Check]
    float64: bool

    def failures(self, strict: bool = False) -> list[Check]:
        return [c for c in self.checks if (c.ratio if strict else c.widened) > 1]

    def worst(self) -> dict:
        """Per step (and 'eval'), its largest plain error / tolerance over every kind."""
        worst = {}
        for c in self.checks:
            worst[c.step] = max(worst.get(c.step, 0.0), c.ratio)
        return worst

    def format(self) -> str:
        """One line per step and kind: the worst tensor's error / tolerance (above 1 fails),
        for a float32 recording also widened by the step's float32 spread; then each step's
        worst ratio and the verdicts."""
        precision = "float64" if self.float64 else "float32"
        header = "step  kind         error/tol" + ("" if self.float64 else "  widened") + "  worst"
        lines = [f"replay of {self.recording} ({precision})", header]
        for c in self.checks:
            if self.float64:
                lines.append(f"{c.step!s:>4}  {c.kind:<11} {c.ratio:>10.3g}  {c.where}")
                continue
            where = c.where if c.ratio > 1 or c.widened_where == c.where else c.widened_where
            lines.append(f"{c.step!s:>4}  {c.kind:<11} {c.ratio:>10.3g} {c.widened:>8.3g}  {where}")
        worst = ", ".join(f"{step}: {ratio:.3g}" for step, ratio in self.worst().items())
        lines.append(f"worst error/tol per step: {worst}")
        for strict, name in ((False, "widened"), (True, "strict"))[self.float64 :]:
            failed = self.failures(strict)
            verdict = f"{len(failed)} check(s) over tolerance" if failed else "all within"
            lines.append(f"{name}: {verdict}")
        return "\n".join(lines)


def _momentum_widening(replayer, k, ours, official, runs) -> dict[str, float]:
    """Per momentum tensor: the perturbed runs' spread, plus the official gradient where
    ours is zero up to rounding and the official step had one (a parameter the official
    optimizer skipped has no gradient to compare). The gradient each side used is its new
    buffer minus momentum x the old buffer minus weight decay x the old weights."""
    optim = replayer.exp.config.optim
    params, _, momentum, _ = replayer.official(k)
    old_params, old_momentum = _flat(params), _flat(momentum)

    def gradient(buffers, name):
        return (
            buffers[name]
            - optim.momentum * old_momentum[name]
            - optim.weight_decay * old_params[name]
        )

    ours_gradient = {name: np.abs(gradient(ours, name)).max() for name in ours}
    largest = max(ours_gradient.values())
    widening = _spread([_flat(_trace(state)) for state, _ in runs], ours)
    for name in replayer.recorded_momentum(k + 1):  # the official gradient exists
        if ours_gradient[name] <= NOISE_GRADIENT * largest:
            widening[name] += float(np.abs(gradient(official, name)).max())
    return widening


def _trace(state: TrainState):
    return optax.tree_utils.tree_get(state.opt_state, "trace")


def _step_checks(replayer: _Replayer, k: int, perturbations: int) -> list[Check]:
    """Step k against official state k + 1; a float32 step's weights and momentum are also
    judged widened by the spread of `perturbations` perturbed runs (a float64 one is not)."""
    recording = replayer.recording
    state, metrics = replayer.step(k)
    runs = [replayer.step(k, seed) for seed in range(perturbations)]
    params, batch_stats, momentum, banks = replayer.official(k + 1)
    ours_params, ours_momentum = _flat(state.params), _flat(_trace(state))
    official_momentum = _flat(momentum)
    widen = not recording.float64
    losses = ("ce", "loss_spatial", "loss_temporal", "loss")
    checks = [
        _check(
            k,
            "loss",
            {name: metrics[name] for name in losses},
            {name: np.asarray(recording[name][k]) for name in losses},
        ),
        _check(k, "lr", {"lr": metrics["lr"]}, {"lr": np.asarray(recording["lr"][k])}),
        _check(
            k,
            "params",
            ours_params,
            _flat(params),
            _spread([_flat(s.params) for s, _ in runs], ours_params) if widen else None,
        ),
        _check(k, "batch_stats", _flat(state.batch_stats), _flat(batch_stats)),
        _check(
            k,
            "momentum",
            ours_momentum,
            official_momentum,
            _momentum_widening(replayer, k, ours_momentum, official_momentum, runs)
            if widen
            else None,
        ),
    ]
    for kind, field in (("banks", "features"), ("filled", "filled")):
        ours = {name: getattr(state.banks[name], field) for name in BANKS}
        official = {name: np.asarray(getattr(banks[name], field)) for name in BANKS}
        checks.append(_check(k, kind, ours, official))
    return checks


def _eval_check(replayer: _Replayer) -> Check:
    """Our eval step on the official final weights against the official eval-mode logits."""
    recording = replayer.recording
    params, batch_stats, _, _ = replayer.official(recording.num_steps)
    variables = backbone_variables(params, batch_stats)
    batch = sharding.global_batch({"x": recording["x_test"]}, replayer.exp.mesh)
    logits, _ = replayer.eval_step(variables, batch)
    return _check("eval", "eval_logits", {"logits": logits}, {"logits": recording["eval_logits"]})


def replay(path: str | Path, *, perturbations: int | None = None, log=print) -> ReplayReport:
    """Replays every recorded step through the compiled train step and compares (see the
    module docstring): a float64 recording in float64 at the plain tolerances; a float32 one
    in float32, where `perturbations` runs per step (default 4) measure its spread."""
    recording = load_recording(path)
    if recording.float64 and perturbations:
        raise RecordingError(
            f"{recording.path}: a float64 recording is judged at the plain tolerances; "
            "perturbed runs only measure a float32 recording's spread (give none)"
        )
    perturbations = 0 if recording.float64 else 4 if perturbations is None else perturbations
    with jax.enable_x64(recording.float64):
        replayer = _Replayer(recording)
        checks = []
        for k in range(recording.num_steps):
            checks += _step_checks(replayer, k, perturbations)
            log(f"step {k} replayed")
        checks.append(_eval_check(replayer))
    return ReplayReport(recording.path, checks, recording.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m csre_jax.replay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("recording", help="a .npz recording of official training steps")
    parser.add_argument(
        "--perturbations",
        type=int,
        default=None,
        help="perturbed runs per step that measure a float32 recording's spread (default 4; "
        "a float64 recording takes none)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail above the plain tolerances alone"
    )
    args = parser.parse_args(argv)
    if args.perturbations is not None and args.perturbations < 0:
        parser.error(f"--perturbations={args.perturbations}: give 0 or more")
    try:
        report = replay(args.recording, perturbations=args.perturbations)
    except (RecordingError, torch_io.TorchCheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.format())
    return 1 if report.failures(args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
