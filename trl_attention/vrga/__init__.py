"""VRGA (Visual Region-Guided Attention, arXiv 2603.14184): training-free boosting, at generation time, of the
attention that a few visual heads pay to the question-relevant image tokens. See docs/vrga.md.

    from trl_attention.vrga import VRGAConfig, enable_vrga
    with enable_vrga(model, VRGAConfig(gamma=0.5)) as vrga:
        out = model.generate(**inputs)
    vrga.diagnostics[0].focus  # per image, the focus tokens on the token grid

    config.py    VRGAConfig (every threshold of the paper)
    select.py    head statistics, visual heads, focus tokens (stage 1)
    runtime.py   enable_vrga: the reweighting during generation (stage 2), through the capture hooks
    inputs.py    the image tokens of each sample; prompts with video tokens refused (VRGA is defined on images)
    qa.py        answering questions with and without VRGA (the CLI and the eval example)
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "VRGA": ".runtime",
    "FocusSelection": ".select",
    "VRGAConfig": ".config",
    "VRGADiagnostics": ".runtime",
    "enable_vrga": ".runtime",
    "head_rows": ".runtime",
    "head_statistics": ".select",
    "select_focus": ".select",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
