"""`compressc tune`: measure the legal schedules of each default variant, keep the fastest.

Three steps, because compiling needs nvidia-cutlass-dsl and measuring needs a GPU:
`candidates` + `prepare` (build host: enumerate and compile into DIR), `measure` (GPU
host, no cutlass: time every candidate from DIR's store), then `--apply` writes the
winners into compressc/passes/tuned.json, which the `default` pipeline reads.
Submodules are imported by the command that needs them.
"""
