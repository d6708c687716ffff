"""CTR-GCN + CSRE with CTR-GCN's own recipe (Uason-Chen/CTR-GCN config/*/default.yaml),
CSRE added on top.

Arg: dataset, benchmark, stream and scale, as configs/common.parse_experiment_arg reads
it, e.g.
  python train.py --config=configs/ctrgcn.py:ntu120,xset,bone --workdir=runs/ntu120_xset_bone
"""

from ml_collections import ConfigDict

from configs import common


def get_config(arg: str | None = None) -> ConfigDict:
    picked = common.parse_experiment_arg(arg)
    ucla = picked["dataset"] == "ucla"
    config = common.base_config()
    common.set_data(config, picked)

    common.set_model(config, "ctrgcn")  # model.kwargs: the official widths (base_channels 64)

    config.seed = 1
    config.num_epochs = 65
    config.data.feeder_variant = "ctrgcn"  # or "csre": joint stream centred per frame
    config.data.batch_size = 16 if ucla else 64
    config.data.eval_batch_size = 64 if ucla else 256
    config.loss.label_smoothing = 0.0
    config.optim.name = "sgd"
    config.optim.base_lr = 0.1
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 1e-4 if ucla else 4e-4
    config.optim.lr_decay = "step"
    config.optim.warmup_epochs = 5
    config.optim.milestones = (50,) if ucla else (35, 55)
    config.optim.decay = 0.1
    config.optim.clip_norm = 0.0

    if picked["scale"] == "tiny":
        common.shrink_to_tiny(config)
        config.model.kwargs.base_channels = 8
    return config
