from explorl.explore.decoding import constant  # noqa: F401
from explorl.explore.decoding import ead  # noqa: F401
from explorl.explore.decoding import cot2  # noqa: F401
from explorl.explore.decoding import swireasoning  # noqa: F401
from explorl.explore.decoding import ctrls  # noqa: F401
from explorl.explore.decoding import east  # noqa: F401
