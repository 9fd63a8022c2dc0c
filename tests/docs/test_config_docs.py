"""docs/configuration.md is what scripts/gen_config_docs.py generates from the dataclasses' help texts."""

import dataclasses
import runpy

from tests.testing_utils import ROOT

ROOT = ROOT


def test_configuration_reference_is_up_to_date():
    generator = runpy.run_path(str(ROOT / "scripts" / "gen_config_docs.py"))
    expected = generator["render"]()
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == expected, "docs/configuration.md is stale: run `python scripts/gen_config_docs.py`"
    from trl_attention.cli.grpo import GRPOScriptArguments
    from trl_attention.ral import AttentionGRPOConfig

    for cls in (AttentionGRPOConfig, GRPOScriptArguments):  # spot check: every own field has its row and help
        for name in (
            ("attn_coef", "attn_layer") if cls is AttentionGRPOConfig else [f.name for f in dataclasses.fields(cls)]
        ):
            field = next(f for f in dataclasses.fields(cls) if f.name == name)
            assert f"| `{name}` |" in committed and " ".join(field.metadata["help"].split()) in committed, name
