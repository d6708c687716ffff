"""InfoGCN (k = 1) + CSRE with InfoGCN's own recipe (stnoah1/infogcn args.py),
trained with label-smoothed cross-entropy plus CSRE, without the information-bottleneck terms.

Arg: dataset, benchmark, stream and scale, as configs/common.parse_experiment_arg reads
it, e.g.
  python train.py --config=configs/infogcn.py:ntu120,xsub,joint --workdir=runs/infogcn_ntu120
"""

from ml_collections import ConfigDict

from configs import common


def get_config(arg: str | None = None) -> ConfigDict:
    picked = common.parse_experiment_arg(arg)
    ucla = picked["dataset"] == "ucla"
    config = common.base_config()
    common.set_data(config, picked)

    common.set_model(config, "infogcn")  # model.kwargs: the official widths (base_channels 64)

    config.seed = 1
    config.num_epochs = 110
    config.data.feeder_variant = "ctrgcn"  # CTR-GCN's data pipeline
    config.data.batch_size = 16 if ucla else 64
    config.data.eval_batch_size = 64 if ucla else 256
    config.loss.label_smoothing = 0.1
    config.optim.name = "sgd"
    config.optim.base_lr = 0.1
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 5e-4
    config.optim.lr_decay = "step"
    config.optim.warmup_epochs = 5
    config.optim.milestones = (90, 100)
    config.optim.decay = 0.1
    config.optim.clip_norm = 0.0

    if picked["scale"] == "tiny":
        common.shrink_to_tiny(config)
        config.model.kwargs.base_channels = 16
        # InfoGCN's decoder init, Normal(0, sqrt(2 / classes)), gives logits of +-50 on 4
        # classes and its latent noise swings with the untrained log-variance: at the
        # recipe's rate the first steps overshoot. A tenth of it trains smoothly.
        config.optim.base_lr /= 10
    return config
