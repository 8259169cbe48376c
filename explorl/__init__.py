"""explorl: exploration plug-ins on one small, fast RLVR engine."""
__version__ = "0.1.0"
