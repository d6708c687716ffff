"""HCN + CSRE on NTU RGB+D 120, HCN's own recipe (configs/common.py).

Arg: [xsub|xset],[joint|bone|joint_motion|bone_motion],[tiny].
'tiny' trains a small model on synthetic skeletons of this layout.
"""

from configs import common


def get_config(arg: str | None = None):
    return common.experiment("hcn", "ntu120", arg)
