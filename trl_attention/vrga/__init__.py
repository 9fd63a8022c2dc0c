"""VRGA (Visual Region-Guided Attention, arXiv 2603.14184): training-free boosting, at generation time, of the
attention that a few visual heads pay to the question-relevant image tokens. See the README section "VRGA".

    from trl_attention.vrga import VRGAConfig, enable_vrga
    with enable_vrga(model, VRGAConfig(gamma=0.5)) as vrga:
        out = model.generate(**inputs)
    vrga.diagnostics[0].focus  # per image, the focus tokens on the token grid
"""

from .config import VRGAConfig
from .runtime import VRGA, VRGADiagnostics, enable_vrga, head_rows
from .select import FocusSelection, head_statistics, select_focus

__all__ = [
    "VRGA",
    "FocusSelection",
    "VRGAConfig",
    "VRGADiagnostics",
    "enable_vrga",
    "head_rows",
    "head_statistics",
    "select_focus",
]
