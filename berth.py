"""Berth's operator command line: `python -m berth <command> ...`, run from the repository
root with the server's environment (it reads the same REGISTRY_* settings and storage).
`python -m berth --help` lists the commands; cli/ holds one module per command."""

import sys

from cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
