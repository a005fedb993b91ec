"""Kernel packs: store-shaped kernel directories inside installable wheels.

    installed.py  the pack index (pack.json), its version check and the installed-pack store
                  the runtime finds through the `compressc.kernel_packs` entry point group
    wanted.py     wanted.json: the key of each variant's default build, for the runtime
    wheel.py      writing a kernel wheel (`compressc wheel`)

A kernel wheel's entry point names only its own package (`<tag> = <package>:ROOT`), and its
`__init__.py` imports only `os`: nothing in an installed pack names a compressc module, so
these modules may move without breaking installed packs.
"""
