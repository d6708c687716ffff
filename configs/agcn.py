"""2S-AGCN + CSRE with CTR-GCN's recipe, as SkeletonGCL trains 2S-AGCN (OliverHxh/SkeletonGCL
config/*/agcn.yaml), CSRE added on top: configs/ctrgcn.py with the other backbone.

Arg as configs/ctrgcn.py's, e.g.:
  python train.py --config=configs/agcn.py:ntu60,xview,bone --workdir=runs/agcn_ntu60_xview_bone
"""

from ml_collections import ConfigDict

from configs import ctrgcn


def get_config(arg: str | None = None) -> ConfigDict:
    config = ctrgcn.get_config(arg)
    config.model.name = "agcn"  # model.kwargs: CTR-GCN's, the same settings (tiny: 8 wide)
    return config
