"""``python -m simulator [serve options]`` runs the simulator."""

from simulator.cli import main

raise SystemExit(main())
