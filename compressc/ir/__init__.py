"""IR types, the `.cir` printer and parser, the verifier and the NumPy interpreter."""

from compressc.ir.core import Attr, Loc, Module, Op, fields
from compressc.ir.parser import ParseError, parse_module
from compressc.ir.printer import print_module

__all__ = ["Attr", "Loc", "Module", "Op", "ParseError", "fields", "parse_module", "print_module"]
