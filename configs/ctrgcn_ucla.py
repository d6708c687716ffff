"""CTR-GCN + CSRE on NW-UCLA (cross-view). Arg: [joint|bone|joint_motion|bone_motion].

CTR-GCN's NW-UCLA recipe (recipes.md §3): batch 16, lr 0.1 decayed x0.1 at epoch 50, 65
epochs, weight decay 1e-4; clips sampled to 52 frames; the training list repeated 5 times.
"""

from configs import common


def get_config(arg: str | None = None):
    picked = common.parse_arg(arg, stream=common.STREAMS)
    config = common.base_config()
    data = config.data
    data.name = "ucla"
    data.stream = picked["stream"]
    data.root = "data/NW-UCLA"  # holds all_sqe/ (README, 'Datasets')
    data.feeder_variant = "ctrgcn"
    data.batch_size = 16
    data.eval_batch_size = 64
    config.optim.weight_decay = 1e-4
    config.optim.milestones = (50,)
    return config
