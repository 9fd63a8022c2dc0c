"""The papers behind each method, for trainer model cards (TRL's `_paper` / `_tag_names`) and the docs.

Citations give what the arXiv listing identifies (title, eprint); docs/papers.md holds the math.
"""

from __future__ import annotations

__all__ = ["PAPERS", "model_card_paper"]

PAPERS = {
    "ral": {"title": "Reinforced Attention Learning", "id": "2602.04884", "key": "ral2026"},
    "sayo": {"title": "SAYO", "id": "2602.08241", "key": "sayo2026"},
    "vrga": {"title": "Visual Region-Guided Attention", "id": "2603.14184", "key": "vrga2026"},
}


def _bibtex(paper: dict) -> str:
    return (
        f"@article{{{paper['key']},\n    title        = {{{{{paper['title']}}}}},\n    year         = 2026,\n"
        f"    eprint       = {{arXiv:{paper['id']}}},\n}}"
    )


def model_card_paper(methods: list[str], base: dict) -> dict:
    """TRL's `_paper` dict citing `methods` (keys of PAPERS; the first gives the title) and then `base`, the TRL
    trainer's own `_paper` (GRPO's DeepSeekMath, GKD's on-policy distillation)."""
    first = PAPERS[methods[0]]
    citations = [_bibtex(PAPERS[m]) for m in methods] + ([base["citation"]] if base.get("citation") else [])
    return {"title": first["title"], "id": first["id"], "citation": "\n\n".join(citations)}
