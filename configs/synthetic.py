"""The embedded default: a small CTR-GCN with CSRE on the package's synthetic skeletons.

Needs no dataset and reaches >= 90% test top-1 in a few minutes on a laptop CPU:
  python train.py --config=configs/synthetic.py --workdir=runs/synthetic
  python train.py --config=configs/synthetic.py:bone --workdir=runs/synthetic_bone
A tenth of the 2,222 generated training samples is held out for tuning ensemble weights
(eval.py), so 2,000 train.
"""

from configs import common


def get_config(arg: str | None = None):
    """arg: the stream (joint, bone, joint_motion, bone_motion)."""
    stream = common.parse_arg(arg, stream=common.STREAMS)["stream"]
    config = common.base_config()
    config.seed = 0
    config.num_epochs = 3
    config.log_every_steps = 10

    data = config.data
    common.set_synthetic_data(data)
    data.num_classes = 10
    data.num_train = 2222  # 2,000 after the validation hold-out below
    data.num_test = 600
    data.num_frames = 24
    data.batch_size = 32
    data.eval_batch_size = 300
    data.stream = stream
    data.val_fraction = 0.1

    config.model.kwargs.base_channels = 16
    # The bank holds 200 samples per class: the official 128 positives would skip every
    # anchor for most of the first epoch, so the counts are scaled to the dataset.
    config.csre.num_positives = 32
    config.csre.num_negatives = 128

    config.optim.base_lr = 0.1
    config.optim.warmup_epochs = 1  # epoch 0 at the full rate: the task is easy
    config.optim.milestones = (2,)
    return config
