"""`python -m compressc.cli ...`: the compressc command where it is not installed."""

from compressc.cli.main import main

main()
