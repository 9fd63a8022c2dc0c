"""Recipes built on trl_attention, shipped beside it: the library never imports this package.

    demo.py            `trl-attention demo` (SFT, then GRPO and RAL on the tiny VLM): `DemoConfig`, `run_demo`
    demo_command.py    the `demo` subcommand, registered through the `trl_attention.commands` entry point
    evaluation.py      held-out accuracy, region share and image-blind baselines of the demo and the benchmarks
    memory.py          live-tensor byte counting for the capture benchmark (`LiveTensorBytes`)
    families.py        tiny offline models of other families (support matrix, any-model tests), and
    families_vlm.py    their VLMs

As torchtune keeps its recipes outside its library and TRL its scripts apart from its trainers: the library is what
a user's training script imports; a recipe is one such script, kept here so the CLI and the tests can run it.
"""
