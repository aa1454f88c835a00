"""The skill registry: every question generator by name, grouped into the VST-P families plus general skills."""

from .common import QA, Ctx, Skill
from .general import SKILLS as _GENERAL
from .multi_image import SKILLS as _MULTI
from .single_image import SKILLS as _SINGLE
from .video import SKILLS as _VIDEO

SKILLS: dict[str, Skill] = {s.name: s for s in [*_SINGLE, *_MULTI, *_VIDEO, *_GENERAL]}


def resolve_skills(spec) -> list[str]:
    """`"all"`, `"cot"`, a comma-separated string or a list of names -> validated skill names in registry order.

    `"cot"` names the skills that have reasoning traces (CoT rows): GRPO's format reward can only build on a
    `<think>` habit the cold start taught, and RL rows drawn from these meet the RL target (README, "The RL rows")."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(SKILLS)
    if spec == "cot" or spec == ["cot"]:
        return [name for name, skill in SKILLS.items() if skill.cot]
    wanted = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    wanted = [s for s in wanted if s]
    unknown = [s for s in wanted if s not in SKILLS]
    if unknown or not wanted:
        raise ValueError(
            f"unknown skill name(s) {unknown or wanted}; valid skills: {', '.join(SKILLS)} (or 'all', 'cot')"
        )
    return [s for s in SKILLS if s in wanted]


__all__ = ["QA", "Ctx", "SKILLS", "Skill", "resolve_skills"]
