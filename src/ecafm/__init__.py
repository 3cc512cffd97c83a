"""ecafm: reproducible analysis of in situ electrochemical AFM of metal anodes."""

__version__ = "0.1.0"
