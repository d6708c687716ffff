"""2S-AGCN + CSRE on NTU RGB+D 60, 2S-AGCN's own recipe (configs/common.py).

Arg: [xsub|xview],[joint|bone|joint_motion|bone_motion],[tiny].
'tiny' trains a small model on synthetic skeletons of this layout.
"""

from configs import common


def get_config(arg: str | None = None):
    return common.experiment("agcn", "ntu60", arg)
