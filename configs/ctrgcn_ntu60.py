"""CTR-GCN + CSRE on NTU RGB+D 60. Arg: [xsub|xview][,joint|bone|joint_motion|bone_motion]."""

from configs import common


def get_config(arg: str | None = None):
    return common.ntu_config("ntu60", arg, benchmarks=("xsub", "xview"))
