"""HCN + CSRE with HCN-pytorch's recipe (huguyuehuhu/HCN-pytorch, NTU params.json of HCN02:
window 64), CSRE added on top; see csre_jax/models/hcn.py for where the CSRE head attaches.

Arg: dataset, benchmark, stream and scale, as configs/common.parse_experiment_arg reads
it, e.g.
  python train.py --config=configs/hcn.py:ntu60,xsub,joint --workdir=runs/hcn_ntu60
"""

from ml_collections import ConfigDict

from configs import common


def get_config(arg: str | None = None) -> ConfigDict:
    picked = common.parse_experiment_arg(arg)
    ucla = picked["dataset"] == "ucla"
    config = common.base_config()
    common.set_data(config, picked)

    common.set_model(config, "hcn")  # model.kwargs: the official widths

    config.seed = 0
    config.num_epochs = 400
    config.data.feeder_variant = "ctrgcn"  # CTR-GCN's data pipeline ...
    if "random_rotation" in config.data:  # ... without its random rotation (NTU's feeders)
        config.data.random_rotation = False
    config.data.batch_size = 16 if ucla else 32
    config.data.eval_batch_size = 64 if ucla else 256
    config.loss.label_smoothing = 0.0
    config.optim.name = "adam"
    config.optim.base_lr = 1e-3
    config.optim.weight_decay = 1e-4
    config.optim.lr_decay = "exponential"
    config.optim.decay = 0.99  # x0.99 per epoch
    config.optim.warmup_epochs = 0
    config.optim.clip_norm = 0.5

    if picked["scale"] == "tiny":
        common.shrink_to_tiny(config)
        config.model.kwargs.update(out_channels=8, hidden=32)
    return config
