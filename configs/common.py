"""What every experiment config shares: the defaults, the arg parser, the dataset settings
and the tiny scale.

Each backbone has one config, `configs/<backbone>.py`, that writes its recipe line by line.
Its arg picks the dataset, the benchmark, the stream and the scale, comma-separated in any
order, e.g. 'ntu120,xset,bone' or 'ucla,tiny' (see `parse_experiment_arg`): the tiny scale
keeps the model, the recipe's optimiser and the input layout of the dataset but shrinks the
widths and trains on synthetic skeletons of that layout, so it runs anywhere in seconds.
'custom' trains on your own pyskl annotation pickle in any layout (`set_data`).

The fields are fixed here: `base_config` returns a locked ConfigDict, and only the setters
below add the fields of a dataset or a backbone. A misspelt field in a config file is then
an error, not a new field beside the real one, which would silently keep its default.
"""

from collections.abc import Sequence

from ml_collections import ConfigDict

from csre_jax.config_checks import backbone_knobs
from csre_jax.data.transforms import NTU_TEST_P, NTU_TRAIN_P, NTU_WINDOW, STREAMS

DATASETS = ("ntu60", "ntu120", "ucla", "custom")
BENCHMARKS = {"ntu60": ("xsub", "xview"), "ntu120": ("xsub", "xset"), "ucla": (), "custom": ()}
CUSTOM_WINDOW = 100  # pyskl's GCN clip length (UniformSample clip_len=100), 2-D and 3-D
SCALES = ("full", "tiny")


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


def parse_experiment_arg(arg: str | None) -> dict[str, str]:
    """'ntu120,xset,bone' -> dataset ntu120, benchmark xset, stream bone, scale full.

    Comma-separated in any order, each optional: the dataset ntu60|ntu120|ucla|custom, the
    benchmark xsub|xview (ntu60) or xsub|xset (ntu120), the stream
    joint|bone|joint_motion|bone_motion, the scale full|tiny ('tiny' trains a small model on
    synthetic skeletons of the dataset's layout; on custom data, on the user's file with a
    short window). Defaults: ntu60, the dataset's first benchmark (xsub), joint, full.
    NW-UCLA and custom data take no benchmark; a benchmark of another dataset (ntu60 with
    xset) is an error.
    """
    tokens = [t.strip() for t in (arg or "").split(",")]
    dataset = ([t for t in tokens if t in DATASETS] or [DATASETS[0]])[-1]
    benchmarks = BENCHMARKS[dataset]
    for token in tokens:
        if token not in benchmarks and any(token in b for b in BENCHMARKS.values()):
            owner = next(d for d, b in BENCHMARKS.items() if token in b)
            valid = ", ".join(benchmarks) or "none, it has one split"
            raise ValueError(
                f"unknown config argument {token!r} for {dataset} (its benchmarks: {valid}); "
                f"{token} is a benchmark of {owner}: name the dataset, e.g. '{owner},{token}'"
            )
    return parse_arg(arg, dataset=DATASETS, benchmark=benchmarks, stream=STREAMS, scale=SCALES)


def base_config() -> ConfigDict:
    """Defaults: the official CSRE loss and the CTR-GCN training recipe; locked."""
    config = ConfigDict()
    config.seed = 1
    config.num_devices = 0  # 0: every visible device
    config.num_epochs = 65
    config.eval_every_epochs = 1
    config.log_every_steps = 50
    config.checkpoint_every_steps = 0  # 0: only at epoch ends
    # Which evaluation's model best/, the score files and eval.py keep: 'val' (best top-1 on
    # the held-out validation split), 'last', or 'test' (the papers' practice: picked on the
    # test set); 'auto' is 'val' with data.val_fraction > 0, else 'last'.
    config.select_on = "auto"
    # Mixed precision: "bfloat16" runs the network in bf16 (for GPUs and TPUs); parameters,
    # optimizer state, BatchNorm statistics, banks, similarities and losses stay float32.
    config.compute_dtype = "float32"

    config.data = ConfigDict()
    config.data.name = "synthetic"
    config.data.stream = "joint"  # joint | bone | joint_motion | bone_motion
    config.data.feeder_variant = "ctrgcn"  # or "csre": joint stream centred per frame
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
    set_model(config, "ctrgcn")
    config.model.init_checkpoint = ""  # an official PyTorch .pt to start from (with std.*)

    config.csre = ConfigDict()
    config.csre.banks = "spatial+temporal"  # '+'-joined subset of spatial/temporal/global, or none
    config.csre.weight = 1.0  # loss = CE + weight * mean of the banks' losses
    config.csre.dim = 256
    # 0: the official bank, one slot per training sample; K > 0: a queue of the K most recent
    # features with their labels, for corpora too large for a slot per sample
    config.csre.bank_size = 0
    config.csre.reduction = 8
    # per anchor; 0 (custom data's default): follow the training set (csre/sampling.py)
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
    return config.lock()


def set_model(config: ConfigDict, name: str) -> None:
    """Backbone `name` with every setting of its own in model.kwargs at the default (the
    official widths), so each can be set (--config.model.kwargs.base_channels=8) and a
    misspelt one is an error."""
    config.model.name = name
    config.model.kwargs = ConfigDict(backbone_knobs(name)).lock()


def set_data(config: ConfigDict, picked: dict[str, str]) -> None:
    """Where the dataset lives and the official feeder settings; the batch
    sizes and the feeder variant are part of each backbone's recipe."""
    data = config.data
    data.name = picked["dataset"]
    data.stream = picked["stream"]
    if data.name == "custom":
        set_custom_data(data)
        # the paper's 128 / 512 assume thousands of samples: follow the training set instead
        config.csre.num_positives = config.csre.num_negatives = 0
        return
    with data.unlocked():
        if data.name == "ucla":
            data.root = "data/NW-UCLA"  # holds all_sqe/ (docs/data.md)
        else:
            data.benchmark = picked["benchmark"]
            data.root = f"data/{data.name}"  # holds the prepared split files (docs/data.md)
            data.num_frames = NTU_WINDOW
            data.train_p_interval = NTU_TRAIN_P
            data.test_p_interval = NTU_TEST_P
            data.random_rotation = True


def set_synthetic_data(data: ConfigDict, skeleton: str = "ntu") -> None:
    """The package's generated skeletons (csre_jax/data/synthetic.py) on NTU's or NW-UCLA's
    joints: a small set by default, which a config may enlarge."""
    with data.unlocked():
        data.name, data.skeleton, data.seed = "synthetic", skeleton, 0
        data.num_classes, data.num_train, data.num_test, data.num_frames = 4, 64, 32, 16


def set_custom_data(data: ConfigDict) -> None:
    """Your own pyskl annotation pickle (csre_jax/data/pyskl.py), given on the command line:
    --config.data.path=my.pkl --config.data.layout=coco (a built-in layout or a JSON file)."""
    with data.unlocked():
        data.path = ""  # the .pkl; required
        data.layout = "coco"
        data.train_split, data.test_split = "train", "test"  # names in the file's 'split'
        data.num_frames = CUSTOM_WINDOW
        data.num_person = 2  # persons kept per sample (module docstring of pyskl_transform.py)
        data.coords = 0  # 2 or 3; 0: the file's, filled in when the dataset loads
        data.use_score = True  # 2-D files with keypoint_score: the score is a third channel
        data.align = "auto"  # 3-D: auto | none | 'a,b,c,d' (z along a->b, then x along c->d)
        data.augment = True  # training: 3-D random rotation; 2-D flip, scale and shift
        data.class_names = ""  # optional text file: one class name per line, by label


def shrink_to_tiny(config: ConfigDict) -> None:
    """Synthetic skeletons in the dataset's layout (custom data: the user's file), a few short
    epochs, a small CSRE head.

    The recipe's optimiser and warm-up stay; the backbone's config then cuts its widths."""
    data = config.data
    if data.name != "custom":
        skeleton = "ucla" if data.name == "ucla" else "ntu"
        with data.unlocked():
            for key in (
                "benchmark",
                "root",
                "train_p_interval",
                "test_p_interval",
                "random_rotation",
            ):
                if key in data:
                    del data[key]
        set_synthetic_data(data, skeleton)
    data.num_frames = 16
    data.batch_size, data.eval_batch_size = 8, 16
    config.csre.dim, config.csre.num_positives, config.csre.num_negatives = 32, 4, 8
    config.num_epochs, config.log_every_steps = 2, 4
    config.optim.milestones = ()  # the recipe's warm-up stays: its first epochs' rates
