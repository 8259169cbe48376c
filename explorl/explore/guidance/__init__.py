"""Guidance: how teacher, reference, replayed and prefix-conditioned samples enter a group."""
from explorl.explore.guidance import sft  # noqa: F401
from explorl.explore.guidance import luffy  # noqa: F401
from explorl.explore.guidance import rl_plus  # noqa: F401
from explorl.explore.guidance import ampo  # noqa: F401
from explorl.explore.guidance import exgrpo  # noqa: F401
from explorl.explore.guidance import red  # noqa: F401
from explorl.explore.guidance import amft  # noqa: F401
from explorl.explore.guidance import spear  # noqa: F401
from explorl.explore.guidance import go_explore  # noqa: F401
from explorl.explore.guidance import rex_rag  # noqa: F401
from explorl.explore.guidance import cot2_csft  # noqa: F401
