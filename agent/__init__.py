"""tracecap: the workstation agent."""
__version__ = "0.1.0"
