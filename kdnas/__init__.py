"""kdnas: find the best small student for the teacher you have."""

__version__ = "0.1.0"
