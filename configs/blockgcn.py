"""BlockGCN + CSRE with BlockGCN's own recipe (ZhouYuxuanYX/BlockGCN config/*), CSRE
added on top. BlockGCN is also fed the absolute joints.

Arg: dataset, benchmark, stream and scale, as configs/common.parse_experiment_arg reads
it, e.g.
  python train.py --config=configs/blockgcn.py:ucla,tiny --workdir=runs/blockgcn_tiny
"""

from ml_collections import ConfigDict

from configs import common


def get_config(arg: str | None = None) -> ConfigDict:
    picked = common.parse_experiment_arg(arg)
    ucla = picked["dataset"] == "ucla"
    config = common.base_config()
    common.set_data(config, picked)

    common.set_model(config, "blockgcn")  # model.kwargs: the official widths

    config.seed = 2
    config.num_epochs = 150 if ucla else 140
    config.data.feeder_variant = "csre"  # BlockGCN uses Hyperformer's data pipeline
    config.data.keep_joint = True  # the absolute joints, BlockGCN's 'joint' input
    config.data.batch_size = 16 if ucla else 64
    config.data.eval_batch_size = 64 if ucla else 256
    config.loss.label_smoothing = 0.0
    config.optim.name = "sgd"
    config.optim.base_lr = 0.05
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 0.0 if ucla else 4e-4
    config.optim.lr_decay = "step"
    config.optim.warmup_epochs = 5
    config.optim.milestones = (110, 120)
    config.optim.decay = 0.1
    config.optim.clip_norm = 0.0

    if picked["scale"] == "tiny":
        common.shrink_to_tiny(config)
        config.model.kwargs.base_channels = 16
    return config
