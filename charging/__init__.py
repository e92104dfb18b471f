"""Real-time online charging system for telecom operators."""

__version__ = "0.1.0"
