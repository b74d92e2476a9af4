"""``python -m asmix`` (also what ``torchrun -m asmix`` runs)."""

from asmix.cli import main

main()
