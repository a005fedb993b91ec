"""Source that makes every nvidia-cutlass-dsl import fail, as on a prebuilt-kernel user's
machine: prepend it to a `python -c` script, or write it as a venv's sitecustomize.py."""

NO_CUTLASS = '''
import importlib.abc, sys

class _NoCutlass(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top.startswith("cutlass") or top == "nvidia_cutlass_dsl":
            message = f"No module named {name!r} (blocked): the test blocked import of {name}"
            raise ModuleNotFoundError(message, name=name)
        return None

sys.meta_path.insert(0, _NoCutlass())
'''
