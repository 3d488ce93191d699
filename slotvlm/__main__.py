"""``python -m slotvlm <command>`` (also what ``torchrun -m slotvlm`` runs)."""
import sys

from slotvlm.cli import main

sys.exit(main())
