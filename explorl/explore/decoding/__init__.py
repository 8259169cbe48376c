from explorl.explore.decoding import constant  # noqa: F401
from explorl.explore.decoding import ead  # noqa: F401
from explorl.explore.decoding import east  # noqa: F401
