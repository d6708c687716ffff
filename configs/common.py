"""Pieces shared by every experiment config: the defaults, the recipes, the arg parser."""

from collections.abc import Sequence

from ml_collections import ConfigDict

STREAMS = ("joint", "bone", "joint_motion", "bone_motion")


def parse_arg(arg: str | None, **choices: Sequence[str]) -> dict[str, str]:
    """'xset,bone' -> {'benchmark': 'xset', 'stream': 'bone'}, each token matched to the
    option whose choices contain it; options not given take their first choice."""
    picked = {name: options[0] for name, options in choices.items()}
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        owners = [name for name, options in choices.items() if token in options]
        if not owners:
            valid = "; ".join(f"{n}: {', '.join(o)}" for n, o in choices.items())
            raise ValueError(f"unknown config argument {token!r} (valid: {valid})")
        picked[owners[0]] = token
    return picked


def base_config() -> ConfigDict:
    """Defaults: the official CSRE loss and the CTR-GCN training recipe (recipes.md §3)."""
    config = ConfigDict()
    config.seed = 1
    config.num_devices = 0  # 0: every visible device
    config.num_epochs = 65
    config.eval_every_epochs = 1
    config.log_every_steps = 50
    config.checkpoint_every_steps = 0  # 0: only at epoch ends

    config.data = ConfigDict()
    config.data.name = "synthetic"
    config.data.batch_size = 64
    config.data.eval_batch_size = 256

    config.model = ConfigDict()
    config.model.name = "ctrgcn"
    config.model.kwargs = ConfigDict({"base_channels": 64})

    config.csre = ConfigDict()
    config.csre.banks = "spatial+temporal"  # '+'-joined subset of spatial/temporal/global, or none
    config.csre.weight = 1.0  # loss = CE + weight * mean of the banks' losses
    config.csre.dim = 256
    config.csre.reduction = 8
    config.csre.num_positives = 128
    config.csre.num_negatives = 512
    config.csre.temperature = 0.8
    config.csre.positive_sampling = "hard"  # hard | random | hard+random
    config.csre.negative_sampling = "hard+random"

    config.optim = ConfigDict()
    config.optim.base_lr = 0.1
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 4e-4
    config.optim.warmup_epochs = 5
    config.optim.milestones = (35, 55)
    config.optim.decay = 0.1
    return config


def ntu_config(name: str, arg: str | None, benchmarks: Sequence[str]) -> ConfigDict:
    """CTR-GCN on an NTU benchmark and stream, with CSRE (recipes.md §3)."""
    picked = parse_arg(arg, benchmark=benchmarks, stream=STREAMS)
    config = base_config()
    data = config.data
    data.name = name
    data.benchmark = picked["benchmark"]
    data.stream = picked["stream"]
    data.root = f"data/{name}"  # holds the prepared split files (README, 'Datasets')
    data.feeder_variant = "ctrgcn"  # or "csre": joint stream centred per frame (data.md §11)
    data.num_frames = 64
    data.train_p_interval = (0.5, 1.0)
    data.test_p_interval = (0.95,)
    data.random_rotation = True
    return config
