"""`python -m clbench`: the same entry point as the `clbench` command, so that
`torchrun --nproc-per-node N -m clbench run ...` works."""

from .cli import main

if __name__ == "__main__":
    main()
