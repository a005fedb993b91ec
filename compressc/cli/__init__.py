"""The `compressc` command: click commands only, one module per command group.

main (the group, opt, emit), build, cache (cache ls/verify/prune/clear/why), packs
(inspect, wheel), tune, config (show-config); options (the variant option group build,
wheel, emit, opt, tune and cache why share) and output (--json).
"""

from compressc.cli.main import main

__all__ = ["main"]
