"""Pieces shared by every experiment config: the defaults, the recipes, the arg parser.

`experiment(model, dataset, arg)` is what each `configs/<model>_<dataset>.py` returns. Its arg
picks the benchmark, the stream and the scale, e.g. 'xset,bone' or 'tiny': the tiny scale
keeps the model, the recipe's optimiser and the input layout of the dataset but shrinks the
widths and trains on synthetic skeletons of that layout, so it runs anywhere in seconds.
"""

from collections.abc import Sequence

from ml_collections import ConfigDict

STREAMS = ("joint", "bone", "joint_motion", "bone_motion")
BENCHMARKS = {"ntu60": ("xsub", "xview"), "ntu120": ("xsub", "xset"), "ucla": ()}
SCALES = ("full", "tiny")

# Hyperformer's NW-UCLA joint groups: the joint and joint-motion configs use the first list,
# the bone and bone-motion configs the second (an inconsistency of the release, kept).
UCLA_JOINT_LABEL = (0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2)
UCLA_BONE_JOINT_LABEL = (0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 2, 2, 2, 0, 2, 2, 2)

# Widths of the tiny scale: every block and head kept, channels cut.
TINY_MODEL_KWARGS = {
    "ctrgcn": {"base_channels": 8},
    "agcn": {"base_channels": 8},
    "hyperformer": {"num_heads": 3, "head_dim": 4},
    "blockgcn": {"base_channels": 16},
    "infogcn": {"base_channels": 16},
    "hcn": {"out_channels": 8, "hidden": 32},
}


def parse_arg(arg: str | None, **choices: Sequence[str]) -> dict[str, str]:
    """'xset,bone' -> {'benchmark': 'xset', 'stream': 'bone'}, each token matched to the
    option whose choices contain it; options not given take their first choice."""
    picked = {name: options[0] for name, options in choices.items() if options}
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        owners = [name for name, options in choices.items() if token in options]
        if not owners:
            valid = "; ".join(f"{n}: {', '.join(o)}" for n, o in choices.items() if o)
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
    # Mixed precision: "bfloat16" runs the network in bf16 (for GPUs and TPUs); parameters,
    # optimizer state, BatchNorm statistics, banks, similarities and losses stay float32.
    config.compute_dtype = "float32"

    config.data = ConfigDict()
    config.data.name = "synthetic"
    config.data.batch_size = 64
    config.data.eval_batch_size = 256
    config.data.keep_joint = False  # also feed the absolute joints (BlockGCN's 'joint')
    # Share of every class's training samples held out as a validation split (recorded in
    # the workdir and scored with the best model), for tuning ensemble weights without test
    # labels. 0 trains on all of them, as the official recipes do; val_seed fixes which
    # samples, identically for every stream.
    config.data.val_fraction = 0.0
    config.data.val_seed = 0

    config.model = ConfigDict()
    config.model.name = "ctrgcn"
    config.model.kwargs = ConfigDict({"base_channels": 64})
    config.model.init_checkpoint = ""  # an official PyTorch .pt to start from (with std.*)

    config.csre = ConfigDict()
    config.csre.banks = "spatial+temporal"  # '+'-joined subset of spatial/temporal/global, or none
    config.csre.weight = 1.0  # loss = CE + weight * mean of the banks' losses
    config.csre.dim = 256
    # 0: the official bank, one slot per training sample; K > 0: a queue of the K most recent
    # features with their labels, for corpora too large for a slot per sample
    config.csre.bank_size = 0
    config.csre.reduction = 8
    config.csre.num_positives = 128
    config.csre.num_negatives = 512
    config.csre.temperature = 0.8
    config.csre.positive_sampling = "hard"  # hard | random | hard+random
    config.csre.negative_sampling = "hard+random"

    config.loss = ConfigDict()
    config.loss.label_smoothing = 0.0

    config.optim = ConfigDict()
    config.optim.name = "sgd"  # sgd | adam
    config.optim.base_lr = 0.1
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 4e-4
    config.optim.lr_decay = "step"  # step: warm-up then x decay at milestones; exponential
    config.optim.warmup_epochs = 5
    config.optim.milestones = (35, 55)
    config.optim.decay = 0.1  # step factor, or the per-epoch factor of exponential
    config.optim.clip_norm = 0.0  # 0: no gradient clipping
    return config


def _data(config: ConfigDict, dataset: str, picked: dict[str, str]) -> None:
    """Where the dataset lives and the official feeder settings (data.md §5-6)."""
    data = config.data
    data.name = dataset
    data.stream = picked["stream"]
    data.feeder_variant = "ctrgcn"  # or "csre": joint stream centred per frame (data.md §11)
    if dataset == "ucla":
        data.root = "data/NW-UCLA"  # holds all_sqe/ (README, 'Datasets')
        data.batch_size = 16
        data.eval_batch_size = 64
        return
    data.benchmark = picked["benchmark"]
    data.root = f"data/{dataset}"  # holds the prepared split files (README, 'Datasets')
    data.num_frames = 64
    data.train_p_interval = (0.5, 1.0)
    data.test_p_interval = (0.95,)
    data.random_rotation = True


def _recipe(config: ConfigDict, model: str, dataset: str) -> None:
    """Each backbone's own official recipe (recipes.md §2-5); CSRE is added on top."""
    optim, data, ucla = config.optim, config.data, dataset == "ucla"
    if model in ("ctrgcn", "agcn"):  # CTR-GCN's recipe; SkeletonGCL trains 2S-AGCN with it
        optim.weight_decay = 1e-4 if ucla else 4e-4
        optim.milestones = (50,) if ucla else (35, 55)
    elif model in ("hyperformer", "blockgcn"):  # the CSRE release / BlockGCN's configs
        config.seed = 2
        config.num_epochs = 150 if ucla else 140
        data.feeder_variant = "csre"  # BlockGCN uses Hyperformer's data pipeline
        optim.base_lr = 0.025 if model == "hyperformer" else 0.05
        optim.weight_decay = 0.0 if ucla else 4e-4
        optim.milestones = (110, 120)
    elif model == "infogcn":
        config.num_epochs = 110
        optim.weight_decay = 5e-4
        optim.milestones = (90, 100)
        config.loss.label_smoothing = 0.1
    elif model == "hcn":  # HCN-pytorch's NTU params.json (HCN02: window 64)
        config.seed = 0
        config.num_epochs = 400
        data.batch_size = 16 if ucla else 32
        data.random_rotation = False
        optim.name = "adam"
        optim.base_lr = 1e-3
        optim.weight_decay = 1e-4
        optim.lr_decay = "exponential"
        optim.decay = 0.99
        optim.warmup_epochs = 0
        optim.clip_norm = 0.5
    else:
        raise ValueError(f"no recipe for model {model!r}; known: {', '.join(TINY_MODEL_KWARGS)}")
    config.model.name = model
    config.model.kwargs = ConfigDict()
    if model == "hyperformer" and ucla:
        bone = data.stream.startswith("bone")
        config.model.kwargs.joint_label = UCLA_BONE_JOINT_LABEL if bone else UCLA_JOINT_LABEL
    if model == "blockgcn":
        data.keep_joint = True


def _tiny(config: ConfigDict, dataset: str) -> None:
    """Synthetic skeletons in the dataset's layout, small widths, a few short epochs."""
    data = config.data
    skeleton = "ucla" if dataset == "ucla" else "ntu"
    for key in ("benchmark", "root", "train_p_interval", "test_p_interval", "random_rotation"):
        if key in data:
            del data[key]
    data.name, data.skeleton, data.seed = "synthetic", skeleton, 0
    data.num_classes, data.num_train, data.num_test, data.num_frames = 4, 64, 32, 16
    data.batch_size, data.eval_batch_size = 8, 16
    config.model.kwargs.update(TINY_MODEL_KWARGS[config.model.name])
    config.csre.dim, config.csre.num_positives, config.csre.num_negatives = 32, 4, 8
    config.num_epochs, config.log_every_steps = 2, 4
    config.optim.milestones = ()  # the recipe's warm-up stays: its first epochs' rates
    if config.model.name == "infogcn":
        # InfoGCN's decoder init, Normal(0, sqrt(2 / classes)), gives logits of +-50 on 4
        # classes and its latent noise swings with the untrained log-variance: at the
        # recipe's rate the first steps overshoot. A tenth of it trains smoothly.
        config.optim.base_lr /= 10


def experiment(model: str, dataset: str, arg: str | None) -> ConfigDict:
    """`model` + CSRE on `dataset` (ntu60, ntu120 or ucla) with the backbone's own recipe."""
    picked = parse_arg(arg, benchmark=BENCHMARKS[dataset], stream=STREAMS, scale=SCALES)
    config = base_config()
    _data(config, dataset, picked)
    _recipe(config, model, dataset)
    if picked["scale"] == "tiny":
        _tiny(config, dataset)
    return config
