"""2S-AGCN + CSRE on NW-UCLA (cross-view), 2S-AGCN's own recipe (configs/common.py).

Arg: [joint|bone|joint_motion|bone_motion],[tiny].
'tiny' trains a small model on synthetic skeletons of this layout.
"""

from configs import common


def get_config(arg: str | None = None):
    return common.experiment("agcn", "ucla", arg)
