"""CTR-GCN + CSRE on NTU RGB+D 120. Arg: [xsub|xset][,joint|bone|joint_motion|bone_motion]."""

from configs import common


def get_config(arg: str | None = None):
    return common.ntu_config("ntu120", arg, benchmarks=("xsub", "xset"))
