"""tulu-lab: a workbench for the Tülu 3 post-training recipe (SFT -> DPO -> RLVR).

Submodules are imported on demand (``from tulu_lab.models import load_model``) so that
``import tulu_lab`` stays cheap and does not pull in torch.
"""

__version__ = "0.1.0"
