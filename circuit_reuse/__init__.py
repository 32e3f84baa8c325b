"""circuit_reuse: reproduce and extend Merullo, Eickhoff and Pavlick (ICLR 2024) on GPT-2.

The library follows the workflow's one-way data flow:
config -> datasets -> models -> path-patching scores -> circuits -> overlap and intervention tables.
"""

__version__ = "0.1.0"
